"""Privacy queries: who did what (audit), everything about one user (export, erasure), and the
erasures not yet finished in this archive."""

from __future__ import annotations

from collections.abc import Sequence

from parley.storage.v1.events_pb2 import UserDataErased, UserDataErasedFromStreams
from sqlalchemy import Connection, select

from parley_core.actor import Actor
from parley_storage.archive.db import ArchiveDb, chunks
from parley_storage.archive.projection import TEXT_EVENTS
from parley_storage.archive.records import EXPIRED, LoggedEvent, StoredEvent, UnfinishedErasure
from parley_storage.schema import channel_messages, data_keys, events
from parley_storage.sealing import user_owner

ERASED = UserDataErased.DESCRIPTOR.full_name
ERASED_FROM_STREAMS = UserDataErasedFromStreams.DESCRIPTOR.full_name


def actor_forms(actor: str) -> tuple[str, ...]:
    """Every form the actor column may hold for `actor`, given in any form (parley_core.actor)."""
    return Actor.parse(actor).stored_forms()


class PrivacyQueries:
    def __init__(self, db: ArchiveDb) -> None:
        self._db = db

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
            return [(r.id, self._db.stored_event(conn, r)) for r in rows[:limit]], len(rows) > limit

        return await self._db.run("audit_events", work)

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
            return [self._db.stored_event(conn, r) for r in rows]

        return await self._db.run("user_events", work)

    async def events_of(self, user_id: str, streams: Sequence[str]) -> list[LoggedEvent]:
        """The events of `streams` with the user's personal data: sealed under any key they ever
        had, or texts they wrote whose archive copy redaction or retention already removed."""

        def work(conn: Connection) -> list[LoggedEvent]:
            their_keys = select(data_keys.c.key_id).where(data_keys.c.owner == user_owner(user_id))
            removed_texts = (
                (events.c.key_id == EXPIRED)
                & events.c.actor.in_(Actor.user(user_id).stored_forms())
                & events.c.event_type.in_(TEXT_EVENTS)
            )
            query = (
                select(events.c.stream, events.c.stream_seq, events.c.subject, events.c.aggregate_id, events.c.event_id)
                .where(events.c.key_id.in_(their_keys) | removed_texts, events.c.stream.in_(list(streams)))
                .order_by(events.c.stream, events.c.stream_seq)
            )
            return [LoggedEvent(*row) for row in conn.execute(query)]

        return await self._db.run("events_of", work)

    async def message_numbers(self, texts: Sequence[LoggedEvent]) -> dict[tuple[str, int], int]:
        """The message number history gives each of these archived texts (its row points at a
        message's newest text, post or edit), by position: readable after the text is shredded."""
        wanted = {(t.stream, t.stream_seq) for t in texts}

        def work(conn: Connection) -> dict[tuple[str, int], int]:
            found: dict[tuple[str, int], int] = {}
            for chunk in chunks(sorted({seq for _, seq in wanted})):
                rows = conn.execute(
                    select(
                        channel_messages.c.stream, channel_messages.c.stream_seq, channel_messages.c.channel_seq
                    ).where(channel_messages.c.stream_seq.in_(chunk))
                ).all()
                found.update(
                    {(r.stream, r.stream_seq): r.channel_seq for r in rows if (r.stream, r.stream_seq) in wanted}
                )
            return found

        return await self._db.run("message_numbers", work)

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

        return await self._db.run("unfinished_erasures", work)
