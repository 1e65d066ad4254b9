"""History as members read it: pages of a channel's messages, who may read them, and what a
member may see of a channel that hides history before a join.

Threads, reactions and hidden history are re-derived here at read time from the channel's
archived, sealed events (see docs/storage.md, "History at read time")."""

from __future__ import annotations

from dataclasses import replace

from parley.messaging.v1.events_pb2 import (
    ChannelCreated,
    MemberJoined,
    MessageEdited,
    MessagePosted,
    ReactionAdded,
    ReactionRemoved,
)
from sqlalchemy import Connection, func, select

from parley_core.envelope import open_payload
from parley_core.visibility import EVERYTHING, HistoryView
from parley_storage.archive.db import ArchiveDb
from parley_storage.archive.records import EXPIRED, StoredMessage
from parley_storage.schema import channel_members, channel_messages, events


class History:
    def __init__(self, db: ArchiveDb) -> None:
        self._db = db

    async def history_view(self, channel_id: str, user_id: str) -> HistoryView:
        """What this member may read of the channel (hide-history-before-join channels)."""
        return await self._db.run("history_view", lambda conn: self._history_view(conn, channel_id, user_id))

    async def is_member(self, channel_id: str, user_id: str) -> bool:
        def work(conn: Connection) -> bool:
            row = conn.execute(
                select(channel_members.c.user_id).where(
                    channel_members.c.channel_id == channel_id, channel_members.c.user_id == user_id
                )
            ).first()
            return row is not None

        return await self._db.run("is_member", work)

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
                envelope = self._db.open_row(conn, r)
                # The row points at the message's newest text: the post, or its latest edit.
                text = open_payload(envelope) if envelope is not None else None
                assert text is None or isinstance(text, MessagePosted | MessageEdited)
                name = "" if text is None else text.sender_name if isinstance(text, MessagePosted) else text.editor_name
                if isinstance(text, MessagePosted):
                    thread_root = text.thread_root_seq
                else:
                    thread_root = self._thread_root_of(
                        conn, r.channel_id, r.channel_seq, before_stream_seq=r.stream_seq
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
            return self._with_reactions(conn, channel_id, messages), len(rows) > limit

        return await self._db.run("channel_history", work)

    def _thread_root_of(self, conn: Connection, channel_id: str, channel_seq: int, *, before_stream_seq: int) -> int:
        """An edited message's thread, from its original post (the newest before the edit)."""
        posts = self._db.channel_payloads(conn, channel_id, [MessagePosted], before_stream_seq=before_stream_seq)
        for _, post in posts:
            if post.channel_seq == channel_seq:
                return int(post.thread_root_seq)
        return 0

    def _with_reactions(self, conn: Connection, channel_id: str, page: list[StoredMessage]) -> list[StoredMessage]:
        if not page:
            return page
        wanted = {m.channel_seq for m in page}
        by_message: dict[int, dict[str, set[str]]] = {}
        for _, change in self._db.channel_payloads(conn, channel_id, [ReactionAdded, ReactionRemoved]):
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

    def _history_view(self, conn: Connection, channel_id: str, user_id: str) -> HistoryView:
        """The facts parley_core.visibility's rule needs, from the archived channel events: does the
        channel hide history, and how many messages were posted before the member's latest join."""
        hide, joined_at = False, 0
        for stream_seq, payload in self._db.channel_payloads(conn, channel_id, [ChannelCreated, MemberJoined]):
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
