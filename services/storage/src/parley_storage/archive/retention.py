"""Retention bookkeeping: channels' retention policies, the messages a policy expires, and the
removed texts still to be deleted from the log."""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlalchemy import Connection, select

from parley_storage.archive.db import ArchiveDb, chunks
from parley_storage.archive.projection import set_retention
from parley_storage.archive.records import LogDeletion, RetentionPolicy
from parley_storage.schema import channel_messages, log_deletions, retention_policies


class RetentionStore:
    def __init__(self, db: ArchiveDb) -> None:
        self._db = db

    async def set_retention(self, channel_id: str, days: int, *, set_by: str) -> None:
        """Keep a channel's messages for ``days`` days; 0 removes the policy (keep forever). What
        archiving messaging's ChannelRetentionSet does; tests set a policy this way directly."""
        await self._db.run(
            "set_retention",
            lambda conn: set_retention(conn, channel_id, days, set_by=set_by, set_at_ns=time.time_ns()),
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

        return await self._db.run("retention_policies", work)

    async def sent_before(self, channel_id: str, before_ns: int) -> list[int]:
        """The channel's messages in history sent before ``before_ns``: what retention expires."""

        def work(conn: Connection) -> list[int]:
            query = select(channel_messages.c.channel_seq).where(
                channel_messages.c.channel_id == channel_id, channel_messages.c.sent_at_ns < before_ns
            )
            return [int(seq) for seq in conn.execute(query.order_by(channel_messages.c.channel_seq)).scalars()]

        return await self._db.run("sent_before", work)

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

        return await self._db.run("log_deletions", work)

    async def forget_log_deletions(self, done: Sequence[LogDeletion]) -> None:
        """These texts are gone from the log (or were never there to delete): their rows go."""

        def work(conn: Connection) -> None:
            by_stream: dict[str, list[int]] = {}
            for deletion in done:
                by_stream.setdefault(deletion.stream, []).append(deletion.stream_seq)
            for stream, seqs in by_stream.items():
                for chunk in chunks(sorted(seqs)):
                    conn.execute(
                        log_deletions.delete().where(
                            log_deletions.c.stream == stream, log_deletions.c.stream_seq.in_(chunk)
                        )
                    )

        await self._db.run("forget_log_deletions", work)
