"""What the archive's queries answer with, and the markers its rows carry."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from google.protobuf.message import DecodeError, Message
from parley.common.v1.envelope_pb2 import EventEnvelope

from parley_core.envelope import UnknownEventType, open_payload

# key_id of an event whose content a redaction or retention removed: the row stays, the envelope is gone.
EXPIRED = "expired"
# Why a text waits in log_deletions.
REDACTED, EXPIRED_BY_RETENTION = "redacted", "expired"


@dataclass(frozen=True)
class StoredMessage:
    channel_id: str
    channel_seq: int
    message_id: str
    sender_id: str
    sender_name: str
    body: str
    sent_at_ns: int
    erased: bool = False  # the author's data key was shredded: name and body are gone for good
    thread_root_seq: int = 0  # a reply in the thread of this message
    reactions: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (emoji, user ids), sorted
    edited: bool = False  # the text shown is an edit's


@dataclass(frozen=True)
class StoredEvent:
    """One archived event: its position and identity always, its envelope unless shredded."""

    stream: str
    stream_seq: int
    subject: str
    event_id: str
    event_type: str
    aggregate_type: str
    aggregate_id: str
    aggregate_version: int
    occurred_at_ns: int
    actor: str
    envelope: EventEnvelope | None
    # The row does not open with its key at its position (its content altered, or moved from
    # another row): envelope is None, and it is not an erasure.
    unreadable: bool = False

    def payload(self) -> Message | None:
        """The event's payload, or None where there is none to read: shredded, unreadable, of a
        type this version does not know, or damaged (callers name such a row rather than fail)."""
        if self.envelope is None:
            return None
        with contextlib.suppress(UnknownEventType, DecodeError):
            return open_payload(self.envelope)
        return None


@dataclass(frozen=True)
class LoggedEvent:
    """Where one event carrying a user's personal data sits in JetStream."""

    stream: str
    stream_seq: int
    subject: str
    aggregate_id: str
    event_id: str = ""


@dataclass(frozen=True)
class LogDeletion:
    """A removed text still to be deleted from the log: where it sits, and which event it is."""

    stream: str
    stream_seq: int
    event_id: str


@dataclass(frozen=True)
class RetentionPolicy:
    channel_id: str
    days: int
    # Who set it and when (ListRetentionPolicies shows them); expiring messages needs neither.
    set_by: str = ""
    set_at_ns: int = 0


@dataclass(frozen=True)
class UnfinishedErasure:
    user_id: str
    destroyed_key_ids: tuple[str, ...]
    recorded: bool  # its audited UserDataErased is in the archive


@dataclass(frozen=True)
class ConsumerProgress:
    consumer: str
    stream: str
    last_seq: int
    last_occurred_at_ns: int


@dataclass(frozen=True)
class SchemaVersions:
    """The envelope schema versions one event type is archived under, in one stream."""

    stream: str
    event_type: str
    oldest: int
    newest: int
    events: int
