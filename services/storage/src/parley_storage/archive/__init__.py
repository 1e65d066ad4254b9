"""The event archive: exactly-once, encrypted archiving of bus events and the queries served
from them. One module per concern, each a small class over the shared ArchiveDb:

- writer: the exactly-once batch writer (events and consumer position in one transaction)
- projection: what an archived messaging event changes in storage's tables, in that transaction
- history: history pages, membership and hide-history visibility
- event_reads: the archive as an event store (replay, holdings, consumer progress)
- privacy: audit, a user's events, unfinished erasures
- retention: retention policies and texts still to delete from the log
- keys: KEK rotation, keyring reconciliation, crypto-shredding

SqlEventArchive puts them together under the names callers use."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine

from parley_storage.archive.db import IN_CHUNK, ArchiveDb, open_engine
from parley_storage.archive.event_reads import EventReads
from parley_storage.archive.history import History
from parley_storage.archive.keys import KeyBookkeeping
from parley_storage.archive.privacy import ERASED, ERASED_FROM_STREAMS, PrivacyQueries, actor_forms
from parley_storage.archive.projection import QUEUED_LOG_DELETIONS
from parley_storage.archive.records import (
    EXPIRED,
    EXPIRED_BY_RETENTION,
    REDACTED,
    ConsumerProgress,
    LogDeletion,
    LoggedEvent,
    RetentionPolicy,
    SchemaVersions,
    StoredEvent,
    StoredMessage,
    UnfinishedErasure,
)
from parley_storage.archive.retention import RetentionStore
from parley_storage.archive.writer import BatchWriter
from parley_storage.datakeys import DataKeys
from parley_storage.domain import NS_PER_DAY
from parley_storage.faults import PauseInBatch

__all__ = [
    "ERASED",
    "ERASED_FROM_STREAMS",
    "EXPIRED",
    "EXPIRED_BY_RETENTION",
    "IN_CHUNK",
    "NS_PER_DAY",
    "QUEUED_LOG_DELETIONS",
    "REDACTED",
    "ArchiveDb",
    "ConsumerProgress",
    "LogDeletion",
    "LoggedEvent",
    "RetentionPolicy",
    "SchemaVersions",
    "SqlEventArchive",
    "StoredEvent",
    "StoredMessage",
    "UnfinishedErasure",
    "actor_forms",
    "open_engine",
]


class SqlEventArchive:
    """Every concern of the archive over one engine and one keyring."""

    def __init__(
        self,
        engine: Engine,
        keys: DataKeys,
        *,
        fault: PauseInBatch | None = None,
        on_log_deletions: Callable[[], None] | None = None,
    ) -> None:
        """``on_log_deletions`` is called after a batch committed texts to delete from the log."""
        db = ArchiveDb(engine, keys)
        self.engine, self.keys, self.run = engine, keys, db.run
        self.writer = BatchWriter(db, fault=fault, on_log_deletions=on_log_deletions)
        self.history = History(db)
        self.event_reads = EventReads(db)
        self.privacy = PrivacyQueries(db)
        self.retention = RetentionStore(db)
        self.key_bookkeeping = KeyBookkeeping(db)

        self.archive = self.writer.archive
        self.pass_parked = self.writer.pass_parked

        self.channel_history = self.history.channel_history
        self.history_view = self.history.history_view
        self.is_member = self.history.is_member

        self.aggregate_events = self.event_reads.aggregate_events
        self.stream_events = self.event_reads.stream_events
        self.holds = self.event_reads.holds
        self.holds_markers = self.event_reads.holds_markers
        self.newest_seq = self.event_reads.newest_seq
        self.count_events = self.event_reads.count_events
        self.positions = self.event_reads.positions
        self.consumer_progress = self.event_reads.consumer_progress
        self.schema_versions = self.event_reads.schema_versions

        self.audit_events = self.privacy.audit_events
        self.user_events = self.privacy.user_events
        self.events_of = self.privacy.events_of
        self.message_numbers = self.privacy.message_numbers
        self.unfinished_erasures = self.privacy.unfinished_erasures

        self.set_retention = self.retention.set_retention
        self.retention_policies = self.retention.retention_policies
        self.sent_before = self.retention.sent_before
        self.log_deletions = self.retention.log_deletions
        self.forget_log_deletions = self.retention.forget_log_deletions

        self.rotate_kek = self.key_bookkeeping.rotate_kek
        self.reconcile_data_keys = self.key_bookkeeping.reconcile_data_keys
        self.shred_user = self.key_bookkeeping.shred_user
        self.live_user_keys = self.key_bookkeeping.live_user_keys
        self.count_events_under = self.key_bookkeeping.count_events_under
