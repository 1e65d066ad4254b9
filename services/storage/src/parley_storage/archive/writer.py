"""The exactly-once batch writer: a consumer's batch of events archived sealed, with the
consumer's position, in one transaction. Storage's hot path: keep it lean (see the bench)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from google.protobuf.message import Message
from parley.messaging.v1.events_pb2 import MessagePosted
from sqlalchemy import Connection, bindparam, func, insert, select, update

from parley_core import telemetry
from parley_core.bus import ReceivedEvent
from parley_core.envelope import UnknownEventType
from parley_storage.archive.db import ArchiveDb
from parley_storage.archive.projection import QUEUED_LOG_DELETIONS, insert_posts, post_row, project
from parley_storage.faults import PauseInBatch
from parley_storage.schema import consumer_positions, events
from parley_storage.sealing import data_owner, event_aad, seal

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
# A parked event's time is the parked copy's to tell, not the archive's: 0, as for an unknown one.
_PASS_POSITION = (
    update(consumer_positions)
    .where(consumer_positions.c.consumer == bindparam("which"), consumer_positions.c.last_seq < bindparam("seq"))
    .values(last_seq=bindparam("seq"), last_occurred_at_ns=0)
)


class BatchWriter:
    def __init__(
        self,
        db: ArchiveDb,
        *,
        fault: PauseInBatch | None = None,
        on_log_deletions: Callable[[], None] | None = None,
    ) -> None:
        """``on_log_deletions`` is called after a batch committed texts to delete from the log."""
        self._db = db
        self._keys = db.keys
        self._fault = fault  # test-only: see faults.py
        self._on_log_deletions = on_log_deletions

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
        stored = await self._db.run("archive_batch", work)
        if any(queued) and self._on_log_deletions is not None:
            self._on_log_deletions()
        return stored

    async def pass_parked(self, consumer: str, stream: str, seq: int) -> None:
        """Record the consumer's position past an event it parked instead of archiving: the event
        is consumed (acknowledged, its copy in PARKED), so nothing below the position awaits it."""

        def work(conn: Connection) -> None:
            # Only forward, checked in the update itself: another instance may commit a batch meanwhile.
            if conn.execute(_PASS_POSITION, {"which": consumer, "seq": seq}).rowcount:
                return
            if conn.execute(_POSITION, {"consumer": consumer}).first() is None:
                conn.execute(
                    _INSERT_POSITION,
                    {"consumer": consumer, "stream": stream, "last_seq": seq, "last_occurred_at_ns": 0},
                )

        await self._db.run("archive_pass_parked", work)

    def _store(self, conn: Connection, item: ReceivedEvent, rows: _BatchRows) -> None:
        """Archive one event of a batch. A new post only adds rows, which wait in `rows` to be
        written with the batch's other posts; any other event reads or changes what is there, so
        the rows queued before it are written first."""
        env = item.envelope
        payload: Message | None
        try:
            payload = item.payload
        except UnknownEventType:
            payload = None  # archived sealed and whole; a newer reader will project it
        key_id, key = self._keys.for_owner(conn, data_owner(env, payload))
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
        if isinstance(payload, MessagePosted) and not late:
            rows.add_post(event_row, post_row(payload, item))
            return
        rows.write(conn)
        conn.execute(_INSERT_EVENT, event_row)
        project(self._db, conn, item, payload, late=late)


class _BatchRows:
    """A batch's new posts, written with one statement per table (an executemany) instead of a
    few statements per post: per-statement work was most of storage's CPU per message."""

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
            insert_posts(conn, self._messages)
            self._events, self._messages = [], []
