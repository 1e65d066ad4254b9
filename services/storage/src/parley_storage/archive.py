"""SqlEventArchive: exactly-once, encrypted archiving of bus events and the queries served from them."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.message import DecodeError, Message
from parley.common.v1.envelope_pb2 import EventEnvelope
from parley.messaging.v1.events_pb2 import (
    ChannelCreated,
    ChannelRetentionSet,
    MemberBanned,
    MemberJoined,
    MemberKicked,
    MemberLeft,
    MessageEdited,
    MessagePosted,
    MessageRedacted,
    MessagesExpired,
    ReactionAdded,
    ReactionRemoved,
)
from parley.storage.v1.events_pb2 import UserDataErased, UserDataErasedFromStreams
from sqlalchemy import Connection, Engine, Row, bindparam, create_engine, event, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from parley_core import telemetry
from parley_core.bus import ReceivedEvent
from parley_core.envelope import UnknownEventType, decode, open_payload
from parley_core.markers import Marker
from parley_core.visibility import EVERYTHING, HistoryView
from parley_storage.datakeys import DataKeys, ShreddedKeys
from parley_storage.faults import PauseInBatch
from parley_storage.kek import Rotation
from parley_storage.schema import (
    channel_members,
    channel_messages,
    consumer_positions,
    data_keys,
    events,
    log_deletions,
    retention_policies,
)
from parley_storage.sealing import RecordUnreadable, data_owner, event_aad, open_sealed, seal, user_owner

log = logging.getLogger(__name__)
T = TypeVar("T")
# Built once and executed with parameters: building `insert(...).values(**row)` per event (bind
# coercion, cache key) was most of storage's CPU at the maximum send rate (bench profile).
_INSERT_EVENT = insert(events)
# The statements every archived batch runs, built once for the same reason.
_POSITION = select(consumer_positions.c.last_seq, consumer_positions.c.last_occurred_at_ns).where(
    consumer_positions.c.consumer == bindparam("consumer")
)
_NEWEST_SEQ = select(func.max(events.c.stream_seq)).where(events.c.stream == bindparam("stream"))
_ARCHIVED_SEQS = select(events.c.stream_seq).where(
    events.c.stream == bindparam("stream"), events.c.stream_seq.in_(bindparam("seqs", expanding=True))
)
_INSERT_POSITION = insert(consumer_positions)
_UPDATE_POSITION = update(consumer_positions).where(consumer_positions.c.consumer == bindparam("which"))
NEW_KEYS = "parley_new_keys"
QUEUED_LOG_DELETIONS = "parley_queued_log_deletions"
# key_id of an event whose content a redaction or retention removed: the row stays, the envelope is gone.
EXPIRED = "expired"
NS_PER_DAY = 86_400 * 10**9
IN_CHUNK = 500  # values per SQL IN list
ERASED = UserDataErased.DESCRIPTOR.full_name
ERASED_FROM_STREAMS = UserDataErasedFromStreams.DESCRIPTOR.full_name
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


def open_engine(url: str) -> Engine:
    # A ping before each use finds a server connection that died; a SQLite file has none to
    # lose, and the ping was a statement more per archived batch.
    engine = create_engine(url, pool_pre_ping=not url.startswith("sqlite"))
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if database and database != ":memory:" and Path(database).parent.is_dir():
            # Made 0600 before SQLite makes it, whatever the umask: its -wal and -shm take its mode.
            os.close(os.open(database, os.O_CREAT | os.O_RDWR, 0o600))

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
            cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
            # WAL lets history reads run while a batch is written; FULL sync makes a commit durable.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.close()

    return engine


def actor_forms(actor: str) -> list[str]:
    """How one person stands in the actor column: messaging records the user id, auth records
    ``user:<id>``; either form asks for both."""
    user_id = actor.removeprefix("user:")
    if user_id == actor and ":" in actor:  # service:NAME and the like: one form only
        return [actor]
    return [user_id, f"user:{user_id}"]


class SqlEventArchive:
    def __init__(
        self,
        engine: Engine,
        keys: DataKeys,
        *,
        fault: PauseInBatch | None = None,
        on_log_deletions: Callable[[], None] | None = None,
    ) -> None:
        """``on_log_deletions`` is called after a batch committed texts to delete from the log."""
        self.engine = engine
        self.keys = keys
        self._fault = fault  # test-only: see faults.py
        self._on_log_deletions = on_log_deletions

    async def run(self, name: str, work: Callable[[Connection], T]) -> T:
        """Run one named transaction in a worker thread; the name shows in traces and slow logs."""

        def transaction() -> T:
            started = time.perf_counter()
            with self.engine.connect() as conn:
                try:
                    with conn.begin():
                        result = work(conn)
                except BaseException:
                    self.keys.forget_uncommitted(conn.info.pop(NEW_KEYS, []))
                    raise
                conn.info.pop(NEW_KEYS, None)
            elapsed = time.perf_counter() - started
            if elapsed > 0.5:
                log.warning("slow transaction", extra={"transaction": name, "seconds": round(elapsed, 3)})
            return result

        with telemetry.tracer(__name__).start_as_current_span(f"sql {name}"):
            return await asyncio.to_thread(transaction)

    def _insert_ignoring_duplicates(self, conn: Connection, table: Any, row: dict[str, object]) -> None:
        conn.execute(_insert_ignoring(conn.dialect.name, table), row)

    async def archive(self, consumer: str, batch: Sequence[ReceivedEvent]) -> int:
        """Store each event of a batch once, whatever the redelivery, and record the consumer's position.

        An event is known by its (stream, stream_seq), not by the consumer's position: the durable
        consumer naks a failed event for a delayed retry while later ones go through, so an event
        can arrive after events with higher sequences and must still be stored.
        """
        if not batch:
            return 0
        streams = {item.stream for item in batch}
        if len(streams) != 1:
            raise ValueError(f"a batch comes from one stream's consumer, not from {sorted(streams)}")
        (stream,) = streams

        def work(conn: Connection) -> int:
            conn.info.pop(QUEUED_LOG_DELETIONS, None)  # counted afresh for this transaction
            position = conn.execute(_POSITION, {"consumer": consumer}).first()
            # Events of the stream archived before this batch, past which an event arrived late.
            newest_before = conn.execute(_NEWEST_SEQ, {"stream": stream}).scalar_one_or_none() or 0
            seqs = sorted({item.stream_seq for item in batch})
            # Only a sequence at or below the newest archived one can be archived already (a
            # redelivery); a batch wholly past it, the usual case, needs no look-up.
            archived = (
                set(conn.execute(_ARCHIVED_SEQS, {"stream": stream, "seqs": seqs}).scalars())
                if seqs[0] <= newest_before
                else set()
            )
            rows = _BatchRows(newest_before=newest_before)
            stored = 0
            for item in sorted(batch, key=lambda e: e.stream_seq):
                if item.stream_seq in archived:
                    continue  # redelivered: already archived in an earlier transaction or this batch
                with telemetry.continued_from(
                    item.headers, f"archive {item.envelope.event_type}", subject=item.subject
                ):
                    self._store(conn, item, rows)
                archived.add(item.stream_seq)
                stored += 1
                if self._fault is not None and stored == 1:
                    rows.write(conn)  # the fault point stops after the first event is written
                    self._fault(stream, item.stream_seq)
            rows.write(conn)
            newest = max(batch, key=lambda e: e.stream_seq)
            last = max(position.last_seq if position else 0, newest.stream_seq)
            occurred = newest.envelope.occurred_at.ToNanoseconds() if last == newest.stream_seq else 0
            if position is None:
                conn.execute(
                    _INSERT_POSITION,
                    {"consumer": consumer, "stream": stream, "last_seq": last, "last_occurred_at_ns": occurred},
                )
            elif last != position.last_seq:
                conn.execute(_UPDATE_POSITION, {"which": consumer, "last_seq": last, "last_occurred_at_ns": occurred})
            queued.append(conn.info.pop(QUEUED_LOG_DELETIONS, 0))
            return stored

        queued: list[int] = []
        stored = await self.run("archive_batch", work)
        if any(queued) and self._on_log_deletions is not None:
            self._on_log_deletions()
        return stored

    def _store(self, conn: Connection, item: ReceivedEvent, rows: _BatchRows) -> None:
        """Archive one event of a batch. A new post only adds rows, which wait in `rows` to be
        written with the batch's other posts; any other event reads or changes what is there, so
        the rows queued before it are written first."""
        env = item.envelope
        payload: Message | None
        try:
            payload = open_payload(env)
        except UnknownEventType:
            payload = None  # archived sealed and whole; a newer reader will project it
        key_id, key = self.keys.for_owner(conn, data_owner(env, payload))
        aad = event_aad(
            stream=item.stream,
            stream_seq=item.stream_seq,
            event_id=env.event_id,
            aggregate_type=env.aggregate_type,
            aggregate_id=env.aggregate_id,
            aggregate_version=env.aggregate_version,
        )
        event_row = {
            "stream": item.stream,
            "stream_seq": item.stream_seq,
            "subject": item.subject,
            "event_id": env.event_id,
            "event_type": env.event_type,
            "schema_version": env.schema_version,
            "aggregate_type": env.aggregate_type,
            "aggregate_id": env.aggregate_id,
            "aggregate_version": env.aggregate_version,
            "occurred_at_ns": env.occurred_at.ToNanoseconds(),
            "actor": env.actor,
            "producer": env.producer,
            "key_id": key_id,
            "envelope": seal(key, env.SerializeToString(), aad),
        }
        late = item.stream_seq < rows.newest_before
        if isinstance(payload, MessagePosted):
            message_row = {
                "channel_id": payload.channel_id,
                "channel_seq": payload.channel_seq,
                "message_id": payload.message_id,
                "sender_id": payload.sender_id,
                "sent_at_ns": payload.sent_at.ToNanoseconds(),
                "stream": item.stream,
                "stream_seq": item.stream_seq,
            }
            if not late:
                rows.add_post(event_row, message_row)
                return
        rows.write(conn)
        conn.execute(_INSERT_EVENT, event_row)
        if isinstance(payload, MessagePosted):
            self._insert_ignoring_duplicates(conn, channel_messages, message_row)
        elif isinstance(payload, ChannelCreated):
            for user_id in (payload.creator_id, *payload.member_ids):  # member_ids: direct conversations
                self._insert_ignoring_duplicates(
                    conn, channel_members, {"channel_id": payload.channel_id, "user_id": user_id}
                )
        elif isinstance(payload, MemberJoined):
            self._insert_ignoring_duplicates(
                conn, channel_members, {"channel_id": payload.channel_id, "user_id": payload.user_id}
            )
        elif isinstance(payload, MessageEdited):
            self._apply_edit(conn, payload, item)
        elif isinstance(payload, MessageRedacted):
            self._remove_texts(conn, payload.channel_id, [payload.channel_seq], reason=REDACTED)
        elif isinstance(payload, MessagesExpired):
            self._remove_texts(conn, payload.channel_id, payload.channel_seqs, reason=EXPIRED_BY_RETENTION)
        elif isinstance(payload, MemberLeft | MemberKicked | MemberBanned):
            _apply_member_left(conn, payload)
        elif isinstance(payload, ChannelRetentionSet):
            # Messaging's record is the policy; the retention job reads this copy of it.
            set_at_ns = env.occurred_at.ToNanoseconds()
            _set_retention(conn, payload.channel_id, payload.days, set_by=payload.set_by, set_at_ns=set_at_ns)
        if isinstance(payload, MessagePosted | MessageEdited) and late:
            # Retried after its redaction or expiry was archived (out of order): remove this text too.
            reason = _archived_removal(self, conn, payload.channel_id, payload.channel_seq)
            if reason is not None:
                self._remove_texts(conn, payload.channel_id, [payload.channel_seq], reason=reason)

    def _open_row(self, conn: Connection, row: Row[Any]) -> EventEnvelope | None:
        """The event's envelope, or None when its data key was shredded or a redaction or retention removed it."""
        if row.key_id == EXPIRED:
            return None
        try:
            key = self.keys.get(conn, row.key_id)
        except RecordUnreadable:
            return None
        aad = event_aad(
            stream=row.stream,
            stream_seq=row.stream_seq,
            event_id=row.event_id,
            aggregate_type=row.aggregate_type,
            aggregate_id=row.aggregate_id,
            aggregate_version=row.aggregate_version,
        )
        return decode(open_sealed(key, bytes(row.envelope), aad))

    def _stored_event(self, conn: Connection, row: Row[Any]) -> StoredEvent:
        """The row as stored, its envelope opened where it can be: a damaged row is reported as
        such (by position and aggregate version) instead of failing the whole read."""
        unreadable = False
        try:
            envelope = self._open_row(conn, row)
        except (RecordUnreadable, DecodeError):
            envelope, unreadable = None, True
        return StoredEvent(
            stream=row.stream,
            stream_seq=row.stream_seq,
            subject=row.subject,
            event_id=row.event_id,
            event_type=row.event_type,
            aggregate_type=row.aggregate_type,
            aggregate_id=row.aggregate_id,
            aggregate_version=row.aggregate_version,
            occurred_at_ns=row.occurred_at_ns,
            actor=row.actor,
            envelope=envelope,
            unreadable=unreadable,
        )

    def _apply_edit(self, conn: Connection, edit: MessageEdited, item: ReceivedEvent) -> None:
        """History shows the newest text: point the message's row at this edit.

        A redacted message stays redacted whatever order a redelivery comes in: its row points
        at an expired event, and an edit arriving later is expired too.
        """
        row = conn.execute(
            select(channel_messages.c.stream, channel_messages.c.stream_seq, events.c.key_id)
            .join(
                events,
                (events.c.stream == channel_messages.c.stream) & (events.c.stream_seq == channel_messages.c.stream_seq),
            )
            .where(channel_messages.c.channel_id == edit.channel_id, channel_messages.c.channel_seq == edit.channel_seq)
        ).first()
        if row is not None and row.key_id == EXPIRED:
            _blank(conn, LogDeletion(item.stream, item.stream_seq, item.envelope.event_id), reason=REDACTED)
            return
        if row is not None and row.stream_seq < item.stream_seq:
            conn.execute(
                update(channel_messages)
                .where(
                    channel_messages.c.channel_id == edit.channel_id, channel_messages.c.channel_seq == edit.channel_seq
                )
                .values(stream=item.stream, stream_seq=item.stream_seq)
            )

    def _remove_texts(self, conn: Connection, channel_id: str, channel_seqs: Sequence[int], *, reason: str) -> None:
        """A redaction or an expiry: every archived text of these messages (post and edits) loses
        its content and is queued for deletion from the log; expired messages also leave history.
        The events keep their place in the archive, and the marker keeps the fact."""
        wanted = set(channel_seqs)
        candidates = conn.execute(
            select(events).where(
                events.c.aggregate_type == "channel",
                events.c.aggregate_id == channel_id,
                events.c.event_type.in_(_TEXT_EVENTS),
                events.c.key_id != EXPIRED,
            )
        ).all()
        for row in candidates:
            envelope = self._open_row(conn, row)
            text = open_payload(envelope) if envelope is not None else None
            if isinstance(text, MessagePosted | MessageEdited) and text.channel_seq in wanted:
                _blank(conn, LogDeletion(row.stream, row.stream_seq, row.event_id), reason=reason)
        if reason == EXPIRED_BY_RETENTION:
            for chunk in _chunks(sorted(wanted)):
                conn.execute(
                    channel_messages.delete().where(
                        channel_messages.c.channel_id == channel_id, channel_messages.c.channel_seq.in_(chunk)
                    )
                )

    async def positions(self) -> dict[str, int]:
        """Archived-up-to stream sequence of every stream, from the consumers' recorded positions."""

        def work(conn: Connection) -> dict[str, int]:
            rows = conn.execute(select(consumer_positions.c.stream, consumer_positions.c.last_seq)).all()
            return {row.stream: int(row.last_seq) for row in rows}

        return await self.run("consumer_positions", work)

    async def history_view(self, channel_id: str, user_id: str) -> HistoryView:
        """What this member may read of the channel (hide-history-before-join channels)."""
        return await self.run("history_view", lambda conn: _history_view(self, conn, channel_id, user_id))

    async def is_member(self, channel_id: str, user_id: str) -> bool:
        def work(conn: Connection) -> bool:
            row = conn.execute(
                select(channel_members.c.user_id).where(
                    channel_members.c.channel_id == channel_id, channel_members.c.user_id == user_id
                )
            ).first()
            return row is not None

        return await self.run("is_member", work)

    async def channel_history(
        self,
        channel_id: str,
        *,
        after_seq: int,
        limit: int,
        before_seq: int = 0,
        after_ns: int = 0,
        before_ns: int = 0,
    ) -> tuple[list[StoredMessage], bool]:
        """A page after `after_seq`/`after_ns`, or the newest page before `before_seq`/`before_ns`; oldest first."""
        backwards = bool(before_seq or before_ns)

        def work(conn: Connection) -> tuple[list[StoredMessage], bool]:
            seq, sent = channel_messages.c.channel_seq, channel_messages.c.sent_at_ns
            query = (
                select(channel_messages, events)
                .join(
                    events,
                    (events.c.stream == channel_messages.c.stream)
                    & (events.c.stream_seq == channel_messages.c.stream_seq),
                )
                .where(channel_messages.c.channel_id == channel_id, seq > after_seq)
            )
            if after_ns:
                query = query.where(sent > after_ns)
            if before_seq:
                query = query.where(seq < before_seq)
            if before_ns:
                query = query.where(sent < before_ns)
            query = query.order_by(seq.desc()) if backwards else query.order_by(seq)
            rows = list(conn.execute(query.limit(limit + 1)).all())
            if backwards:
                rows = [*reversed(rows[:limit]), *rows[limit:]]
            messages = []
            for r in rows[:limit]:
                envelope = self._open_row(conn, r)
                # The row points at the message's newest text: the post, or its latest edit.
                text = open_payload(envelope) if envelope is not None else None
                assert text is None or isinstance(text, MessagePosted | MessageEdited)
                name = "" if text is None else text.sender_name if isinstance(text, MessagePosted) else text.editor_name
                if isinstance(text, MessagePosted):
                    thread_root = text.thread_root_seq
                else:
                    thread_root = _thread_root_of(
                        self, conn, r.channel_id, r.channel_seq, before_stream_seq=r.stream_seq
                    )
                messages.append(
                    StoredMessage(
                        r.channel_id,
                        r.channel_seq,
                        r.message_id,
                        r.sender_id,
                        name,
                        text.body if text else "",
                        r.sent_at_ns,
                        erased=text is None and r.key_id != EXPIRED,  # shredded, not redacted or expired
                        thread_root_seq=thread_root,
                        edited=isinstance(text, MessageEdited),
                    )
                )
            return _with_reactions(self, conn, channel_id, messages), len(rows) > limit

        return await self.run("channel_history", work)

    async def aggregate_events(
        self,
        aggregate_type: str,
        aggregate_id: str,
        *,
        after_version: int,
        limit: int,
        streams: frozenset[str] | None = None,
    ) -> tuple[list[StoredEvent], bool]:
        """The events of one aggregate in version order: what a service replays to rebuild it."""

        def work(conn: Connection) -> tuple[list[StoredEvent], bool]:
            query = select(events).where(
                events.c.aggregate_type == aggregate_type,
                events.c.aggregate_id == aggregate_id,
                events.c.aggregate_version > after_version,
            )
            if streams is not None:
                query = query.where(events.c.stream.in_(sorted(streams)))
            rows = conn.execute(query.order_by(events.c.aggregate_version, events.c.stream_seq).limit(limit + 1)).all()
            return [self._stored_event(conn, r) for r in rows[:limit]], len(rows) > limit

        return await self.run("aggregate_events", work)

    async def stream_events(self, stream: str, *, after_seq: int, limit: int) -> tuple[list[StoredEvent], bool]:
        """A stream's events in stream order, for rebuilding from before JetStream's retention."""

        def work(conn: Connection) -> tuple[list[StoredEvent], bool]:
            rows = conn.execute(
                select(events)
                .where(events.c.stream == stream, events.c.stream_seq > after_seq)
                .order_by(events.c.stream_seq)
                .limit(limit + 1)
            ).all()
            return [self._stored_event(conn, r) for r in rows[:limit]], len(rows) > limit

        return await self.run("stream_events", work)

    async def audit_events(
        self,
        *,
        actor: str = "",
        target: str = "",
        since_ns: int = 0,
        until_ns: int = 0,
        after_id: int = 0,
        limit: int,
    ) -> tuple[list[tuple[int, StoredEvent]], bool]:
        """Events by actor and/or target aggregate id within a time range; paged by row id."""

        def work(conn: Connection) -> tuple[list[tuple[int, StoredEvent]], bool]:
            query = select(events).where(events.c.id > after_id)
            if actor:
                query = query.where(events.c.actor.in_(actor_forms(actor)))
            if target:
                query = query.where(events.c.aggregate_id == target)
            if since_ns:
                query = query.where(events.c.occurred_at_ns >= since_ns)
            if until_ns:
                query = query.where(events.c.occurred_at_ns < until_ns)
            rows = conn.execute(query.order_by(events.c.id).limit(limit + 1)).all()
            return [(r.id, self._stored_event(conn, r)) for r in rows[:limit]], len(rows) > limit

        return await self.run("audit_events", work)

    async def user_events(self, user_id: str) -> list[StoredEvent]:
        """Everything about one user: events sealed under their keys, or that they acted in."""

        def work(conn: Connection) -> list[StoredEvent]:
            their_keys = select(data_keys.c.key_id).where(data_keys.c.owner == user_owner(user_id))
            rows = conn.execute(
                select(events)
                .where(
                    events.c.key_id.in_(their_keys)
                    | events.c.actor.in_(actor_forms(user_id))
                    | (events.c.aggregate_id == user_id)
                )
                .order_by(events.c.stream, events.c.stream_seq)
            ).all()
            return [self._stored_event(conn, r) for r in rows]

        return await self.run("user_events", work)

    async def events_of(self, user_id: str, streams: Sequence[str]) -> list[LoggedEvent]:
        """The events of `streams` with the user's personal data: sealed under any key they ever
        had, or texts they wrote whose archive copy redaction or retention already removed."""

        def work(conn: Connection) -> list[LoggedEvent]:
            their_keys = select(data_keys.c.key_id).where(data_keys.c.owner == user_owner(user_id))
            removed_texts = (
                (events.c.key_id == EXPIRED) & (events.c.actor == user_id) & events.c.event_type.in_(_TEXT_EVENTS)
            )
            query = (
                select(events.c.stream, events.c.stream_seq, events.c.subject, events.c.aggregate_id, events.c.event_id)
                .where(events.c.key_id.in_(their_keys) | removed_texts, events.c.stream.in_(list(streams)))
                .order_by(events.c.stream, events.c.stream_seq)
            )
            return [LoggedEvent(*row) for row in conn.execute(query)]

        return await self.run("events_of", work)

    async def message_numbers(self, texts: Sequence[LoggedEvent]) -> dict[tuple[str, int], int]:
        """The message number history gives each of these archived texts (its row points at a
        message's newest text, post or edit), by position: readable after the text is shredded."""
        wanted = {(t.stream, t.stream_seq) for t in texts}

        def work(conn: Connection) -> dict[tuple[str, int], int]:
            found: dict[tuple[str, int], int] = {}
            seqs = sorted({seq for _, seq in wanted})
            for start in range(0, len(seqs), IN_CHUNK):
                rows = conn.execute(
                    select(
                        channel_messages.c.stream, channel_messages.c.stream_seq, channel_messages.c.channel_seq
                    ).where(channel_messages.c.stream_seq.in_(seqs[start : start + IN_CHUNK]))
                ).all()
                found.update(
                    {(r.stream, r.stream_seq): r.channel_seq for r in rows if (r.stream, r.stream_seq) in wanted}
                )
            return found

        return await self.run("message_numbers", work)

    async def unfinished_erasures(self) -> list[UnfinishedErasure]:
        """Users whose data keys are destroyed but whose erasure has not reached the log in this
        archive: erased after the backup it was restored from (the keyring had shredded their
        keys), or an erasure that was still deleting when the backup was taken."""

        def work(conn: Connection) -> list[UnfinishedErasure]:
            def recorded(event_type: str) -> set[str]:
                query = select(events.c.aggregate_id).where(
                    events.c.stream == "STORE", events.c.event_type == event_type
                )
                return set(conn.execute(query).scalars())

            finished, decided = recorded(ERASED_FROM_STREAMS), recorded(ERASED)
            destroyed: dict[str, list[str]] = {}
            rows = conn.execute(
                select(data_keys.c.owner, data_keys.c.key_id)
                .where(data_keys.c.wrapped_key.is_(None), data_keys.c.owner.startswith("user:"))
                .order_by(data_keys.c.owner, data_keys.c.key_id)
            )
            for row in rows:
                destroyed.setdefault(row.owner.removeprefix("user:"), []).append(row.key_id)
            return [
                UnfinishedErasure(user_id, tuple(keys), recorded=user_id in decided)
                for user_id, keys in destroyed.items()
                if user_id not in finished
            ]

        return await self.run("unfinished_erasures", work)

    async def shred_user(self, user_id: str) -> ShreddedKeys:
        """Crypto-shred one user: their data keys are destroyed, their records stay as unreadable bytes."""
        return await self.run("shred_user", lambda conn: self.keys.shred(conn, user_owner(user_id)))

    async def live_user_keys(self, user_id: str) -> list[str]:
        def work(conn: Connection) -> list[str]:
            query = select(data_keys.c.key_id).where(
                data_keys.c.owner == user_owner(user_id), data_keys.c.wrapped_key.is_not(None)
            )
            return list(conn.execute(query.order_by(data_keys.c.key_id)).scalars())

        return await self.run("live_user_keys", work)

    async def count_events_under(self, key_ids: Sequence[str]) -> int:
        def work(conn: Connection) -> int:
            query = select(func.count()).select_from(events).where(events.c.key_id.in_(list(key_ids)))
            return int(conn.execute(query).scalar_one())

        return await self.run("count_events_under", work)

    async def set_retention(self, channel_id: str, days: int, *, set_by: str) -> None:
        """Keep a channel's messages for ``days`` days; 0 removes the policy (keep forever). What
        archiving messaging's ChannelRetentionSet does; tests set a policy this way directly."""
        await self.run(
            "set_retention",
            lambda conn: _set_retention(conn, channel_id, days, set_by=set_by, set_at_ns=time.time_ns()),
        )

    async def retention_policies(self, channel_id: str | None = None) -> list[RetentionPolicy]:
        """Every channel's policy, or one channel's (none when it keeps its messages forever)."""

        def work(conn: Connection) -> list[RetentionPolicy]:
            query = select(retention_policies)
            if channel_id is not None:
                query = query.where(retention_policies.c.channel_id == channel_id)
            return [
                RetentionPolicy(r.channel_id, r.days, set_by=r.set_by, set_at_ns=r.set_at_ns)
                for r in conn.execute(query.order_by(retention_policies.c.channel_id))
            ]

        return await self.run("retention_policies", work)

    async def sent_before(self, channel_id: str, before_ns: int) -> list[int]:
        """The channel's messages in history sent before ``before_ns``: what retention expires."""

        def work(conn: Connection) -> list[int]:
            query = select(channel_messages.c.channel_seq).where(
                channel_messages.c.channel_id == channel_id, channel_messages.c.sent_at_ns < before_ns
            )
            return [int(seq) for seq in conn.execute(query.order_by(channel_messages.c.channel_seq)).scalars()]

        return await self.run("sent_before", work)

    async def holds(self, stream: str, stream_seqs: Sequence[int]) -> bool:
        """Whether every one of these events of ``stream`` is archived (by any storage instance)."""
        wanted = sorted(set(stream_seqs))

        def work(conn: Connection) -> bool:
            found = 0
            for chunk in _chunks(wanted):
                query = select(func.count()).where(events.c.stream == stream, events.c.stream_seq.in_(chunk))
                found += int(conn.execute(query).scalar_one())
            return found == len(wanted)

        return await self.run("holds", work)

    async def holds_markers(self, markers: Sequence[Marker]) -> set[Marker]:
        """Which of these owners' markers are archived (by any storage instance), found by their
        aggregate (indexed) and event id."""

        def work(conn: Connection) -> set[Marker]:
            found = set()
            for marker in dict.fromkeys(markers):
                query = select(events.c.id).where(
                    events.c.aggregate_type == marker.aggregate_type,
                    events.c.aggregate_id == marker.aggregate_id,
                    events.c.event_id == marker.event_id,
                )
                if conn.execute(query.limit(1)).first() is not None:
                    found.add(marker)
            return found

        return await self.run("holds_markers", work)

    async def log_deletions(self, *, limit: int, after: LogDeletion | None = None) -> list[LogDeletion]:
        """Removed texts still to be deleted from the log, in log order (after `after`, to page)."""

        def work(conn: Connection) -> list[LogDeletion]:
            c = log_deletions.c
            query = select(c.stream, c.stream_seq, c.event_id)
            if after is not None:
                query = query.where(
                    (c.stream > after.stream) | ((c.stream == after.stream) & (c.stream_seq > after.stream_seq))
                )
            rows = conn.execute(query.order_by(c.stream, c.stream_seq).limit(limit))
            return [LogDeletion(r.stream, int(r.stream_seq), r.event_id) for r in rows]

        return await self.run("log_deletions", work)

    async def forget_log_deletions(self, done: Sequence[LogDeletion]) -> None:
        """These texts are gone from the log (or were never there to delete): their rows go."""

        def work(conn: Connection) -> None:
            by_stream: dict[str, list[int]] = {}
            for deletion in done:
                by_stream.setdefault(deletion.stream, []).append(deletion.stream_seq)
            for stream, seqs in by_stream.items():
                for chunk in _chunks(sorted(seqs)):
                    conn.execute(
                        log_deletions.delete().where(
                            log_deletions.c.stream == stream, log_deletions.c.stream_seq.in_(chunk)
                        )
                    )

        await self.run("forget_log_deletions", work)

    async def rotate_kek(self) -> Rotation:
        return await self.run("rotate_kek", self.keys.rotate)

    async def reconcile_data_keys(self) -> int:
        """At start: the keyring holds every live data key and no destroyed one, and the rows match
        it (see DataKeys.sync and shred_recorded_erasures)."""

        def work(conn: Connection) -> int:
            adopted = self.keys.adopt(conn)
            return adopted + len(self.keys.shred_recorded_erasures(conn)) + self.keys.sync(conn)

        return await self.run("reconcile_data_keys", work)

    async def consumer_progress(self) -> list[ConsumerProgress]:
        def work(conn: Connection) -> list[ConsumerProgress]:
            rows = conn.execute(select(consumer_positions).order_by(consumer_positions.c.consumer)).all()
            return [ConsumerProgress(r.consumer, r.stream, r.last_seq, r.last_occurred_at_ns) for r in rows]

        return await self.run("consumer_progress", work)

    async def schema_versions(self) -> list[SchemaVersions]:
        def work(conn: Connection) -> list[SchemaVersions]:
            c = events.c
            rows = conn.execute(
                select(c.stream, c.event_type, func.min(c.schema_version), func.max(c.schema_version), func.count())
                .group_by(c.stream, c.event_type)
                .order_by(c.stream, c.event_type)
            ).all()
            return [SchemaVersions(r[0], r[1], int(r[2]), int(r[3]), int(r[4])) for r in rows]

        return await self.run("schema_versions", work)

    async def newest_seq(self, stream: str) -> int:
        """The highest stream sequence archived from `stream` (0: none)."""

        def work(conn: Connection) -> int:
            query = select(func.max(events.c.stream_seq)).where(events.c.stream == stream)
            return int(conn.execute(query).scalar_one() or 0)

        return await self.run("newest_seq", work)

    async def count_events(self, stream: str) -> int:
        def work(conn: Connection) -> int:
            return conn.execute(select(func.count()).select_from(events).where(events.c.stream == stream)).scalar_one()

        return await self.run("count_events", work)


# --- issue 4 (messaging): edits, redactions and leaving, in the archive's projections ---------

_TEXT_EVENTS = (MessagePosted.DESCRIPTOR.full_name, MessageEdited.DESCRIPTOR.full_name)


def _blank(conn: Connection, text: LogDeletion, *, reason: str) -> None:
    """Remove one text's content from the archive and queue its deletion from the log, together."""
    conn.execute(
        update(events)
        .where(events.c.stream == text.stream, events.c.stream_seq == text.stream_seq)
        .values(envelope=b"", key_id=EXPIRED)
    )
    row = {"stream": text.stream, "stream_seq": text.stream_seq, "event_id": text.event_id}
    conn.execute(
        _insert_ignoring(conn.dialect.name, log_deletions), {**row, "reason": reason, "recorded_at_ns": time.time_ns()}
    )
    conn.info[QUEUED_LOG_DELETIONS] = conn.info.get(QUEUED_LOG_DELETIONS, 0) + 1


def _set_retention(conn: Connection, channel_id: str, days: int, *, set_by: str, set_at_ns: int) -> None:
    conn.execute(retention_policies.delete().where(retention_policies.c.channel_id == channel_id))
    if days:
        conn.execute(
            insert(retention_policies).values(channel_id=channel_id, days=days, set_by=set_by, set_at_ns=set_at_ns)
        )


def _chunks(values: Sequence[int], size: int = 500) -> list[Sequence[int]]:
    """Bounded IN lists: SQLite and PostgreSQL take them, however long a run is."""
    return [values[i : i + size] for i in range(0, len(values), size)]


def _apply_member_left(conn: Connection, left: MemberLeft | MemberKicked | MemberBanned) -> None:
    """A member who left (or was removed) reads no more history of the channel."""
    conn.execute(
        channel_members.delete().where(
            channel_members.c.channel_id == left.channel_id, channel_members.c.user_id == left.user_id
        )
    )


# What history shows besides the text (threads, reactions, hidden history before a join) is
# read from the archived, sealed channel events at query time: no table of the storage schema
# changes for it. Each reads the channel's events of a few types only.


def _channel_payloads(
    archive: SqlEventArchive, conn: Connection, channel_id: str, types: Sequence[type[Message]], **where: Any
) -> Any:
    """(stream_seq, payload) of the channel's events of these types, oldest first; erased ones skipped."""
    query = select(events).where(
        events.c.aggregate_type == "channel",
        events.c.aggregate_id == channel_id,
        events.c.event_type.in_([t.DESCRIPTOR.full_name for t in types]),
        events.c.key_id != EXPIRED,
    )
    if (before := where.get("before_stream_seq")) is not None:
        query = query.where(events.c.stream_seq < before).order_by(events.c.stream_seq.desc())
    else:
        query = query.order_by(events.c.stream_seq)
    for row in conn.execute(query).all():
        envelope = archive._open_row(conn, row)
        if envelope is not None:
            yield row.stream_seq, open_payload(envelope)


def _archived_removal(archive: SqlEventArchive, conn: Connection, channel_id: str, channel_seq: int) -> str | None:
    """Why this message's texts are removed (an archived redaction or expiry of it), or None."""
    for _, payload in _channel_payloads(archive, conn, channel_id, [MessageRedacted, MessagesExpired]):
        if isinstance(payload, MessageRedacted) and payload.channel_seq == channel_seq:
            return REDACTED
        if isinstance(payload, MessagesExpired) and channel_seq in payload.channel_seqs:
            return EXPIRED_BY_RETENTION
    return None


def _thread_root_of(
    archive: SqlEventArchive, conn: Connection, channel_id: str, channel_seq: int, *, before_stream_seq: int
) -> int:
    """An edited message's thread, from its original post (the newest before the edit)."""
    for _, post in _channel_payloads(archive, conn, channel_id, [MessagePosted], before_stream_seq=before_stream_seq):
        if post.channel_seq == channel_seq:
            return int(post.thread_root_seq)
    return 0


def _with_reactions(
    archive: SqlEventArchive, conn: Connection, channel_id: str, page: list[StoredMessage]
) -> list[StoredMessage]:
    if not page:
        return page
    wanted = {m.channel_seq for m in page}
    by_message: dict[int, dict[str, set[str]]] = {}
    for _, change in _channel_payloads(archive, conn, channel_id, [ReactionAdded, ReactionRemoved]):
        if change.channel_seq not in wanted:
            continue
        users = by_message.setdefault(change.channel_seq, {}).setdefault(change.emoji, set())
        if isinstance(change, ReactionAdded):
            users.add(change.user_id)
        else:
            users.discard(change.user_id)
    return [
        replace(
            m,
            reactions=tuple(
                (emoji, tuple(sorted(users)))
                for emoji, users in sorted(by_message.get(m.channel_seq, {}).items())
                if users
            ),
        )
        for m in page
    ]


def _history_view(archive: SqlEventArchive, conn: Connection, channel_id: str, user_id: str) -> HistoryView:
    """The facts parley_core.visibility's rule needs, from the archived channel events: does the
    channel hide history, and how many messages were posted before the member's latest join."""
    hide, joined_at = False, 0
    for stream_seq, payload in _channel_payloads(archive, conn, channel_id, [ChannelCreated, MemberJoined]):
        if isinstance(payload, ChannelCreated):
            hide = payload.hide_history_before_join
            if user_id in (payload.creator_id, *payload.member_ids):
                joined_at = stream_seq
        elif payload.user_id == user_id:
            joined_at = stream_seq
    if not hide or not joined_at:
        return EVERYTHING
    earlier = conn.execute(
        select(func.count()).where(
            events.c.aggregate_type == "channel",
            events.c.aggregate_id == channel_id,
            events.c.event_type == MessagePosted.DESCRIPTOR.full_name,
            events.c.stream_seq < joined_at,
        )
    ).scalar_one()
    return HistoryView.at_join(hides_history=hide, newest_seq_at_join=int(earlier))


@functools.cache
def _insert_ignoring(dialect: str, table: Any) -> Any:
    """An insert that skips a row whose key exists (a redelivered event's projection), built once."""
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return insert(table)


class _BatchRows:
    """A batch's new posts, written with one statement per table (an executemany) instead of two
    statements per post: per-statement work was most of storage's CPU per message."""

    def __init__(self, *, newest_before: int) -> None:
        self.newest_before = newest_before  # an event below it arrived after later ones were archived
        self._events: list[dict[str, object]] = []
        self._messages: list[dict[str, object]] = []

    def add_post(self, event_row: dict[str, object], message_row: dict[str, object]) -> None:
        self._events.append(event_row)
        self._messages.append(message_row)

    def write(self, conn: Connection) -> None:
        if self._events:
            conn.execute(_INSERT_EVENT, self._events)
            conn.execute(_insert_ignoring(conn.dialect.name, channel_messages), self._messages)
            self._events, self._messages = [], []
