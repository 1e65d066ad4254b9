"""Reading the archive as an event store: an aggregate's or a stream's events to replay, which
events are archived, and how far each consumer got."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, func, select

from parley_core.markers import Marker
from parley_storage.archive.db import ArchiveDb, chunks
from parley_storage.archive.records import ConsumerProgress, SchemaVersions, StoredEvent
from parley_storage.schema import consumer_positions, events


class EventReads:
    def __init__(self, db: ArchiveDb) -> None:
        self._db = db

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
            return [self._db.stored_event(conn, r) for r in rows[:limit]], len(rows) > limit

        return await self._db.run("aggregate_events", work)

    async def stream_events(self, stream: str, *, after_seq: int, limit: int) -> tuple[list[StoredEvent], bool]:
        """A stream's events in stream order, for rebuilding from before JetStream's retention."""

        def work(conn: Connection) -> tuple[list[StoredEvent], bool]:
            rows = conn.execute(
                select(events)
                .where(events.c.stream == stream, events.c.stream_seq > after_seq)
                .order_by(events.c.stream_seq)
                .limit(limit + 1)
            ).all()
            return [self._db.stored_event(conn, r) for r in rows[:limit]], len(rows) > limit

        return await self._db.run("stream_events", work)

    async def holds(self, stream: str, stream_seqs: Sequence[int]) -> bool:
        """Whether every one of these events of ``stream`` is archived (by any storage instance)."""
        wanted = sorted(set(stream_seqs))

        def work(conn: Connection) -> bool:
            found = 0
            for chunk in chunks(wanted):
                query = select(func.count()).where(events.c.stream == stream, events.c.stream_seq.in_(chunk))
                found += int(conn.execute(query).scalar_one())
            return found == len(wanted)

        return await self._db.run("holds", work)

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

        return await self._db.run("holds_markers", work)

    async def newest_seq(self, stream: str) -> int:
        """The highest stream sequence archived from `stream` (0: none)."""

        def work(conn: Connection) -> int:
            query = select(func.max(events.c.stream_seq)).where(events.c.stream == stream)
            return int(conn.execute(query).scalar_one() or 0)

        return await self._db.run("newest_seq", work)

    async def count_events(self, stream: str) -> int:
        def work(conn: Connection) -> int:
            return conn.execute(select(func.count()).select_from(events).where(events.c.stream == stream)).scalar_one()

        return await self._db.run("count_events", work)

    async def positions(self) -> dict[str, int]:
        """Archived-up-to stream sequence of every stream, from the consumers' recorded positions."""

        def work(conn: Connection) -> dict[str, int]:
            rows = conn.execute(select(consumer_positions.c.stream, consumer_positions.c.last_seq)).all()
            return {row.stream: int(row.last_seq) for row in rows}

        return await self._db.run("consumer_positions", work)

    async def consumer_progress(self) -> list[ConsumerProgress]:
        def work(conn: Connection) -> list[ConsumerProgress]:
            rows = conn.execute(select(consumer_positions).order_by(consumer_positions.c.consumer)).all()
            return [ConsumerProgress(r.consumer, r.stream, r.last_seq, r.last_occurred_at_ns) for r in rows]

        return await self._db.run("consumer_progress", work)

    async def schema_versions(self) -> list[SchemaVersions]:
        def work(conn: Connection) -> list[SchemaVersions]:
            c = events.c
            rows = conn.execute(
                select(c.stream, c.event_type, func.min(c.schema_version), func.max(c.schema_version), func.count())
                .group_by(c.stream, c.event_type)
                .order_by(c.stream, c.event_type)
            ).all()
            return [SchemaVersions(r[0], r[1], int(r[2]), int(r[3]), int(r[4])) for r in rows]

        return await self._db.run("schema_versions", work)
