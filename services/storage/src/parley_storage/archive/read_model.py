"""The read model history is served from, written in the transaction that archives each event:
thread roots, reactions, members with the facts of their latest join, each message's texts, and
removed messages. Its rows hold numbers, ids and pointers to sealed events, never content, so a
shredded key, a redaction or retention leaves nothing readable here (see schema.py).

Reads of it are plain indexed queries: a page costs the same in a channel of 100 or 100,000
messages (`make bench` measures it)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from parley.messaging.v1.events_pb2 import MessagePosted, ReactionAdded, ReactionRemoved
from sqlalchemy import Connection, Row, bindparam, func, select, update

from parley_core.envelope import open_payload
from parley_core.visibility import EVERYTHING, HistoryView
from parley_storage.archive.db import ArchiveDb, chunks, insert_ignoring
from parley_storage.archive.records import EXPIRED, EXPIRED_BY_RETENTION
from parley_storage.schema import (
    channel_members,
    channel_messages,
    channels,
    events,
    message_reactions,
    message_texts,
    removed_messages,
)
from parley_storage.sealing import RecordUnreadable

# Built once: they run with every archived batch of posts.
_ADD_POSTS = (
    update(channels)
    .where(channels.c.channel_id == bindparam("which"))
    .values(posts=channels.c.posts + bindparam("added"))
)
_ON_EVENT = (events.c.stream == message_reactions.c.stream) & (events.c.stream_seq == message_reactions.c.stream_seq)


def text_row(channel_id: str, channel_seq: int, stream: str, stream_seq: int) -> dict[str, object]:
    return {"channel_id": channel_id, "channel_seq": channel_seq, "stream": stream, "stream_seq": stream_seq}


def record_posts(conn: Connection, messages: Sequence[Mapping[str, Any]]) -> None:
    """New posts (their channel_messages rows, already written) add to their channel's count of
    posts, which is its newest message number. One statement per batch: the hot path."""
    added = Counter(str(m["channel_id"]) for m in messages)
    conn.execute(_ADD_POSTS, [{"which": c, "added": n} for c, n in added.items()])


def record_late_post(conn: Connection, channel_id: str, stream_seq: int) -> None:
    """A post archived after later events (a retry): members who joined after it was appended
    joined when the channel's newest number was one higher than their row says."""
    conn.execute(
        update(channel_members)
        .where(channel_members.c.channel_id == channel_id, channel_members.c.joined_at_stream_seq > stream_seq)
        .values(newest_seq_at_join=channel_members.c.newest_seq_at_join + 1)
    )


def record_channel(conn: Connection, channel_id: str, *, hides_history: bool, late: bool) -> None:
    """A new channel. Its posts are counted from here on; only a ChannelCreated archived late
    (after later events) can find posts of it archived already, which it counts."""
    posts = posts_before(conn, channel_id, None) if late else 0
    row = {"channel_id": channel_id, "hides_history": hides_history, "posts": posts}
    conn.execute(insert_ignoring(conn.dialect.name, channels), row)


def record_join(conn: Connection, channel_id: str, user_id: str, stream_seq: int, *, late: bool) -> None:
    """A member (re)joined by the event at `stream_seq`; their latest join is the one that counts."""
    newest = posts_before(conn, channel_id, stream_seq) if late else posts_of(conn, channel_id)
    joined = {"joined_at_stream_seq": stream_seq, "newest_seq_at_join": newest}
    conn.execute(
        insert_ignoring(conn.dialect.name, channel_members), {"channel_id": channel_id, "user_id": user_id, **joined}
    )
    conn.execute(
        update(channel_members)
        .where(
            channel_members.c.channel_id == channel_id,
            channel_members.c.user_id == user_id,
            channel_members.c.joined_at_stream_seq < stream_seq,
        )
        .values(**joined)
    )


def posts_of(conn: Connection, channel_id: str) -> int:
    found = conn.execute(select(channels.c.posts).where(channels.c.channel_id == channel_id)).scalar_one_or_none()
    return int(found or 0)


def posts_before(conn: Connection, channel_id: str, stream_seq: int | None) -> int:
    """Archived posts of the channel appended before this position (all of them for None): for an
    event archived late, which is rare, so a count over the channel's events."""
    query = select(func.count()).where(
        events.c.aggregate_type == "channel",
        events.c.aggregate_id == channel_id,
        events.c.event_type == MessagePosted.DESCRIPTOR.full_name,
    )
    if stream_seq is not None:
        query = query.where(events.c.stream_seq < stream_seq)
    return int(conn.execute(query).scalar_one())


def history_view(conn: Connection, channel_id: str, user_id: str) -> HistoryView:
    """The facts parley_core.visibility's rule needs, as the member's latest join left them."""
    row = conn.execute(
        select(channels.c.hides_history, channel_members.c.joined_at_stream_seq, channel_members.c.newest_seq_at_join)
        .join(channels, channels.c.channel_id == channel_members.c.channel_id)
        .where(channel_members.c.channel_id == channel_id, channel_members.c.user_id == user_id)
    ).first()
    if row is None or not row.joined_at_stream_seq:
        return EVERYTHING
    return HistoryView.at_join(hides_history=bool(row.hides_history), newest_seq_at_join=int(row.newest_seq_at_join))


def record_reaction(
    db: ArchiveDb, conn: Connection, change: ReactionAdded | ReactionRemoved, stream: str, stream_seq: int
) -> None:
    """Point the (message, user, emoji) row at this change unless it holds a newer one. The row is
    found among the user's few rows on the message by opening their events (the emoji is sealed)."""
    if removal_of(conn, change.channel_id, change.channel_seq) == EXPIRED_BY_RETENTION:
        return  # the message left history; its reactions are not kept beside it
    mine = conn.execute(
        select(events)
        .join(message_reactions, _ON_EVENT)
        .where(
            message_reactions.c.channel_id == change.channel_id,
            message_reactions.c.channel_seq == change.channel_seq,
            message_reactions.c.user_id == change.user_id,
        )
    ).all()
    same = next((row for row in mine if _emoji(db, conn, row) == change.emoji), None)
    values = {"stream": stream, "stream_seq": stream_seq, "present": isinstance(change, ReactionAdded)}
    if same is None:
        key = {"channel_id": change.channel_id, "channel_seq": change.channel_seq, "user_id": change.user_id}
        conn.execute(insert_ignoring(conn.dialect.name, message_reactions), {**key, **values})
    elif same.stream_seq < stream_seq or same.stream != stream:
        conn.execute(
            update(message_reactions)
            .where(message_reactions.c.stream == same.stream, message_reactions.c.stream_seq == same.stream_seq)
            .values(**values)
        )


def _emoji(db: ArchiveDb, conn: Connection, row: Row[Any]) -> str | None:
    envelope = db.open_row(conn, row)
    change = open_payload(envelope) if envelope is not None else None
    return change.emoji if isinstance(change, ReactionAdded | ReactionRemoved) else None


def reactions_of(
    db: ArchiveDb, conn: Connection, channel_id: str, channel_seqs: Sequence[int]
) -> dict[int, dict[str, set[str]]]:
    """The present reactions of these messages: {channel_seq: {emoji: user ids}}."""
    by_message: dict[int, dict[str, set[str]]] = {}
    for chunk in chunks(list(channel_seqs)):
        rows = conn.execute(
            select(events, message_reactions.c.channel_seq.label("reacted_to"), message_reactions.c.user_id)
            .join(message_reactions, _ON_EVENT)
            .where(
                message_reactions.c.channel_id == channel_id,
                message_reactions.c.channel_seq.in_(chunk),
                message_reactions.c.present.is_(True),
            )
        ).all()
        for row in rows:
            if (emoji := _emoji(db, conn, row)) is not None:
                by_message.setdefault(row.reacted_to, {}).setdefault(emoji, set()).add(row.user_id)
    return by_message


def record_texts(conn: Connection, channel_id: str, channel_seq: int, texts: Iterable[tuple[str, int]]) -> None:
    """Texts of a message that its channel_messages row may no longer point at (an edit, and the
    text it replaces), so a redaction or an expiry finds every one by key."""
    rows = [text_row(channel_id, channel_seq, stream, stream_seq) for stream, stream_seq in texts]
    conn.execute(insert_ignoring(conn.dialect.name, message_texts), rows)


def texts_to_remove(db: ArchiveDb, conn: Connection, channel_id: str, channel_seqs: Iterable[int]) -> list[Row[Any]]:
    """The archived texts of these messages that still hold content (an erased one's stays as it
    is): the one each message's row points at, and those message_texts kept."""
    found: dict[tuple[str, int], Any] = {}
    for chunk in chunks(sorted(set(channel_seqs))):
        for table in (channel_messages, message_texts):
            rows = conn.execute(
                select(events.c.stream, events.c.stream_seq, events.c.event_id, events.c.key_id)
                .join(table, (events.c.stream == table.c.stream) & (events.c.stream_seq == table.c.stream_seq))
                .where(table.c.channel_id == channel_id, table.c.channel_seq.in_(chunk), events.c.key_id != EXPIRED)
            ).all()
            found.update(((row.stream, row.stream_seq), row) for row in rows if _key_lives(db, conn, row.key_id))
    return [found[at] for at in sorted(found)]


def _key_lives(db: ArchiveDb, conn: Connection, key_id: str) -> bool:
    try:
        db.keys.get(conn, key_id)
    except RecordUnreadable:
        return False
    return True


def record_removal(conn: Connection, channel_id: str, channel_seqs: Iterable[int], *, reason: str) -> None:
    """Messages redacted or expired; expired ones leave history, with their reactions."""
    wanted = sorted(set(channel_seqs))
    if not wanted:
        return
    conn.execute(
        insert_ignoring(conn.dialect.name, removed_messages),
        [{"channel_id": channel_id, "channel_seq": seq, "reason": reason} for seq in wanted],
    )
    if reason != EXPIRED_BY_RETENTION:
        return
    for table in (channel_messages, message_reactions):
        for chunk in chunks(wanted):
            conn.execute(table.delete().where(table.c.channel_id == channel_id, table.c.channel_seq.in_(chunk)))


def removal_of(conn: Connection, channel_id: str, channel_seq: int) -> str | None:
    """Why this message's texts are removed (an archived redaction or expiry of it), or None."""
    query = select(removed_messages.c.reason).where(
        removed_messages.c.channel_id == channel_id, removed_messages.c.channel_seq == channel_seq
    )
    return conn.execute(query).scalar_one_or_none()
