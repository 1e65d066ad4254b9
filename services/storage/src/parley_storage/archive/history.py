"""History as members read it: pages of a channel's messages, who may read them, and what a
member may see of a channel that hides history before a join.

Every part of a page is a plain indexed read of the read model (read_model.py) written when the
events were archived; only the page's own texts and reactions are opened (decrypted)."""

from __future__ import annotations

from dataclasses import replace

from parley.messaging.v1.events_pb2 import MessageEdited, MessagePosted
from sqlalchemy import Connection, select

from parley_core.envelope import open_payload
from parley_core.visibility import HistoryView
from parley_storage.archive import read_model
from parley_storage.archive.db import ArchiveDb
from parley_storage.archive.records import EXPIRED, StoredMessage
from parley_storage.schema import channel_members, channel_messages, events


class History:
    def __init__(self, db: ArchiveDb) -> None:
        self._db = db

    async def history_view(self, channel_id: str, user_id: str) -> HistoryView:
        """What this member may read of the channel (hide-history-before-join channels)."""
        return await self._db.run("history_view", lambda conn: read_model.history_view(conn, channel_id, user_id))

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
                        thread_root_seq=r.thread_root_seq if text is not None else 0,
                        edited=isinstance(text, MessageEdited),
                    )
                )
            return self._with_reactions(conn, channel_id, messages), len(rows) > limit

        return await self._db.run("channel_history", work)

    def _with_reactions(self, conn: Connection, channel_id: str, page: list[StoredMessage]) -> list[StoredMessage]:
        if not page:
            return page
        by_message = read_model.reactions_of(self._db, conn, channel_id, [m.channel_seq for m in page])
        return [
            replace(
                m,
                reactions=tuple(
                    (emoji, tuple(sorted(users))) for emoji, users in sorted(by_message.get(m.channel_seq, {}).items())
                ),
            )
            for m in page
        ]
