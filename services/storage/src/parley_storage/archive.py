"""SqlEventArchive: exactly-once archiving of bus events and the queries served from them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from parley.common.v1.envelope_pb2 import EventEnvelope
from parley.messaging.v1.events_pb2 import (
    ChannelCreated,
    MemberBanned,
    MemberJoined,
    MemberKicked,
    MemberLeft,
    MessageEdited,
    MessagePosted,
    MessageRedacted,
)
from sqlalchemy import Connection, Engine, create_engine, delete, event, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from parley_core import telemetry
from parley_core.bus import ReceivedEvent
from parley_core.envelope import UnknownEventType, decode, open_payload
from parley_storage.schema import channel_members, channel_messages, consumer_positions, events, metadata

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class StoredMessage:
    channel_id: str
    channel_seq: int
    message_id: str
    sender_id: str
    sender_name: str
    body: str
    sent_at_ns: int


def open_engine(url: str) -> Engine:
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
            cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
            # WAL lets history reads run while a batch is written; FULL sync makes a commit durable.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.close()

    return engine


class SqlEventArchive:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create_schema(self) -> None:
        metadata.create_all(self.engine)

    async def run(self, name: str, work: Callable[[Connection], T]) -> T:
        """Run one named transaction in a worker thread; the name shows in traces and slow logs."""

        def transaction() -> T:
            started = time.perf_counter()
            with self.engine.begin() as conn:
                result = work(conn)
            elapsed = time.perf_counter() - started
            if elapsed > 0.5:
                log.warning("slow transaction", extra={"transaction": name, "seconds": round(elapsed, 3)})
            return result

        with telemetry.tracer(__name__).start_as_current_span(f"sql {name}"):
            return await asyncio.to_thread(transaction)

    def _insert_ignoring_duplicates(self, conn: Connection, table: object, row: dict[str, object]) -> None:
        dialect = conn.dialect.name
        if dialect == "sqlite":
            conn.execute(sqlite.insert(table).values(**row).on_conflict_do_nothing())  # type: ignore[arg-type]
        elif dialect == "postgresql":
            conn.execute(postgresql.insert(table).values(**row).on_conflict_do_nothing())  # type: ignore[arg-type]
        else:
            conn.execute(insert(table).values(**row))  # type: ignore[arg-type]

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
            position = conn.execute(
                select(consumer_positions.c.last_seq).where(consumer_positions.c.consumer == consumer)
            ).scalar_one_or_none()
            archived = set(
                conn.execute(
                    select(events.c.stream_seq).where(
                        events.c.stream == stream, events.c.stream_seq.in_(sorted({item.stream_seq for item in batch}))
                    )
                ).scalars()
            )
            stored = 0
            for item in sorted(batch, key=lambda e: e.stream_seq):
                if item.stream_seq in archived:
                    continue  # redelivered: already archived in an earlier transaction or this batch
                with telemetry.continued_from(
                    item.headers, f"archive {item.envelope.event_type}", subject=item.subject
                ):
                    self._store(conn, item)
                archived.add(item.stream_seq)
                stored += 1
            last = max(position or 0, *(item.stream_seq for item in batch))
            if position is None:
                conn.execute(insert(consumer_positions).values(consumer=consumer, stream=stream, last_seq=last))
            elif last != position:
                conn.execute(
                    update(consumer_positions).where(consumer_positions.c.consumer == consumer).values(last_seq=last)
                )
            return stored

        return await self.run("archive_batch", work)

    def _store(self, conn: Connection, item: ReceivedEvent) -> None:
        env = _without_redacted_text(conn, item.envelope)
        conn.execute(
            insert(events).values(
                stream=item.stream,
                stream_seq=item.stream_seq,
                subject=item.subject,
                event_id=env.event_id,
                event_type=env.event_type,
                schema_version=env.schema_version,
                aggregate_type=env.aggregate_type,
                aggregate_id=env.aggregate_id,
                aggregate_version=env.aggregate_version,
                occurred_at_ns=env.occurred_at.ToNanoseconds(),
                actor=env.actor,
                producer=env.producer,
                envelope=env.SerializeToString(),
            )
        )
        try:
            payload = open_payload(env)
        except UnknownEventType:
            return  # archived verbatim; a newer reader will project it
        if isinstance(payload, MessageRedacted):
            _scrub_archived_text(conn, payload)
        if isinstance(payload, MessagePosted):
            self._insert_ignoring_duplicates(
                conn,
                channel_messages,
                {
                    "channel_id": payload.channel_id,
                    "channel_seq": payload.channel_seq,
                    "message_id": payload.message_id,
                    "sender_id": payload.sender_id,
                    "sender_name": payload.sender_name,
                    "body": payload.body,
                    "sent_at_ns": payload.sent_at.ToNanoseconds(),
                },
            )
        elif isinstance(payload, ChannelCreated):
            for user_id in (payload.creator_id, *payload.member_ids):  # member_ids: direct conversations
                self._insert_ignoring_duplicates(
                    conn, channel_members, {"channel_id": payload.channel_id, "user_id": user_id}
                )
        elif isinstance(payload, MemberJoined):
            self._insert_ignoring_duplicates(
                conn, channel_members, {"channel_id": payload.channel_id, "user_id": payload.user_id}
            )
        elif isinstance(payload, MessageEdited | MessageRedacted):
            _apply_message_change(conn, payload)
        elif isinstance(payload, MemberLeft | MemberKicked | MemberBanned):
            _apply_member_left(conn, payload)

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
            query = select(channel_messages).where(channel_messages.c.channel_id == channel_id, seq > after_seq)
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
            messages = [
                StoredMessage(
                    r.channel_id, r.channel_seq, r.message_id, r.sender_id, r.sender_name, r.body, r.sent_at_ns
                )
                for r in rows[:limit]
            ]
            return messages, len(rows) > limit

        return await self.run("channel_history", work)

    async def count_events(self, stream: str) -> int:
        def work(conn: Connection) -> int:
            return conn.execute(select(func.count()).select_from(events).where(events.c.stream == stream)).scalar_one()

        return await self.run("count_events", work)


# --- issue 4 (messaging): edits and redactions in the channel_messages projection -----------


def _apply_message_change(conn: Connection, change: MessageEdited | MessageRedacted) -> None:
    """Keep channel_messages showing what a member may see now.

    A redaction blanks the text (an empty body marks it: a posted body is never empty); an edit
    never brings back the text of a redacted message, whatever order a redelivery comes in.
    """
    row = channel_messages.c
    where = (row.channel_id == change.channel_id, row.channel_seq == change.channel_seq)
    if isinstance(change, MessageRedacted):
        conn.execute(update(channel_messages).where(*where).values(body=""))
    else:
        conn.execute(update(channel_messages).where(*where, row.body != "").values(body=change.body))


def _apply_member_left(conn: Connection, left: MemberLeft | MemberKicked | MemberBanned) -> None:
    """A member who left (or was removed) reads no more history of the channel."""
    conn.execute(
        delete(channel_members).where(
            channel_members.c.channel_id == left.channel_id, channel_members.c.user_id == left.user_id
        )
    )


_TEXT_EVENTS = (MessagePosted.DESCRIPTOR.full_name, MessageEdited.DESCRIPTOR.full_name)


def _channel_events(conn: Connection, channel_id: str, event_types: Sequence[str]) -> list[tuple[int, EventEnvelope]]:
    rows = conn.execute(
        select(events.c.id, events.c.envelope).where(
            events.c.aggregate_type == "channel",
            events.c.aggregate_id == channel_id,
            events.c.event_type.in_(event_types),
        )
    ).all()
    return [(row.id, decode(row.envelope)) for row in rows]


def _scrub_archived_text(conn: Connection, redacted: MessageRedacted) -> None:
    """Redaction reaches the archived events too: every text the message had is blanked in place.

    The events keep their identity, order and metadata, and MessageRedacted keeps the fact; only
    the words are gone. (The JetStream log keeps them until its retention drops them.)
    """
    for row_id, envelope in _channel_events(conn, redacted.channel_id, _TEXT_EVENTS):
        payload = open_payload(envelope)
        if isinstance(payload, MessagePosted | MessageEdited) and payload.channel_seq == redacted.channel_seq:
            blank = _blanked(envelope).SerializeToString()
            conn.execute(update(events).where(events.c.id == row_id).values(envelope=blank))


def _without_redacted_text(conn: Connection, envelope: EventEnvelope) -> EventEnvelope:
    """A text event that arrives after its message's redaction (a late redelivery) is stored blank."""
    if envelope.event_type not in _TEXT_EVENTS:
        return envelope
    payload = open_payload(envelope)
    assert isinstance(payload, MessagePosted | MessageEdited)
    redactions = _channel_events(conn, payload.channel_id, [MessageRedacted.DESCRIPTOR.full_name])
    if any(open_payload(env).channel_seq == payload.channel_seq for _, env in redactions):  # type: ignore[attr-defined]
        return _blanked(envelope)
    return envelope


def _blanked(envelope: EventEnvelope) -> EventEnvelope:
    payload = open_payload(envelope)
    assert isinstance(payload, MessagePosted | MessageEdited)
    payload.body = ""
    blank = EventEnvelope()
    blank.CopyFrom(envelope)
    blank.payload = payload.SerializeToString()
    return blank
