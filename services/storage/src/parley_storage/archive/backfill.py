"""Filling the read model of an archive written before it existed (migration 0004): the archived
channel events are opened once, in log order, and applied as the writer applies them now.

Only the read model's own rows are written: channel_messages and channel_members already hold
the right rows, which get their thread root and the facts of their latest join."""

from __future__ import annotations

from collections import Counter

from parley.messaging.v1.events_pb2 import (
    ChannelCreated,
    MemberJoined,
    MessageEdited,
    MessagePosted,
    MessageRedacted,
    MessagesExpired,
    ReactionAdded,
    ReactionRemoved,
)
from sqlalchemy import Connection, select, tuple_, update

from parley_core.envelope import open_payload
from parley_storage.archive import read_model
from parley_storage.archive.db import ArchiveDb, insert_ignoring
from parley_storage.archive.records import EXPIRED, EXPIRED_BY_RETENTION, REDACTED
from parley_storage.datakeys import DataKeys
from parley_storage.schema import channel_members, channel_messages, channels, events

PAGE = 1000
_POSTED = MessagePosted.DESCRIPTOR.full_name


class KeyringNeeded(Exception):
    """The archive holds events, and filling the read model from them needs the keyring."""


def require_keyring(conn: Connection, keys: DataKeys | None) -> None:
    """Refuse before any change when the archive has channel events and no keyring came (SQLite
    commits each schema change as it goes, so a refusal after one would leave half a migration)."""
    if keys is None and _has_channel_events(conn):
        raise KeyringNeeded("migrating an archive to the read model opens its channel events: pass the keyring")


def _has_channel_events(conn: Connection) -> bool:
    return conn.execute(select(events.c.id).where(events.c.aggregate_type == "channel").limit(1)).first() is not None


def fill_read_model(conn: Connection, keys: DataKeys | None) -> int:
    """Apply every archived channel event to the read model; returns how many were opened."""
    require_keyring(conn, keys)
    if keys is None or not _has_channel_events(conn):
        return 0
    db = ArchiveDb(conn.engine, keys)
    posts: Counter[str] = Counter()  # each channel's posts archived so far, in log order
    opened = 0
    after = ("", 0)
    while True:
        rows = conn.execute(
            select(events)
            .where(events.c.aggregate_type == "channel", tuple_(events.c.stream, events.c.stream_seq) > after)
            .order_by(events.c.stream, events.c.stream_seq)
            .limit(PAGE)
        ).all()
        if not rows:
            break
        after = (rows[-1].stream, rows[-1].stream_seq)
        for row in rows:
            channel_id = row.aggregate_id
            if row.event_type == _POSTED:
                posts[channel_id] += 1  # counted opened or not, as the writer counts them
            envelope = db.open_row(conn, row) if row.key_id != EXPIRED else None
            if envelope is None:
                continue
            opened += 1
            payload = open_payload(envelope)
            if isinstance(payload, MessagePosted):
                _fill_post(conn, payload, row.stream, row.stream_seq)
            elif isinstance(payload, MessageEdited):
                read_model.record_texts(conn, channel_id, payload.channel_seq, [(row.stream, row.stream_seq)])
            elif isinstance(payload, ChannelCreated):
                read_model.record_channel(conn, channel_id, hides_history=payload.hide_history_before_join, late=False)
                for user_id in (payload.creator_id, *payload.member_ids):
                    _fill_join(conn, channel_id, user_id, row.stream_seq, posts[channel_id])
            elif isinstance(payload, MemberJoined):
                _fill_join(conn, channel_id, payload.user_id, row.stream_seq, posts[channel_id])
            elif isinstance(payload, ReactionAdded | ReactionRemoved):
                read_model.record_reaction(db, conn, payload, row.stream, row.stream_seq)
            elif isinstance(payload, MessageRedacted):
                read_model.record_removal(conn, channel_id, [payload.channel_seq], reason=REDACTED)
            elif isinstance(payload, MessagesExpired):
                read_model.record_removal(conn, channel_id, payload.channel_seqs, reason=EXPIRED_BY_RETENTION)
    _fill_post_counts(conn, posts)
    return opened


def _fill_post(conn: Connection, post: MessagePosted, stream: str, stream_seq: int) -> None:
    read_model.record_texts(conn, post.channel_id, post.channel_seq, [(stream, stream_seq)])
    if post.thread_root_seq:
        conn.execute(
            update(channel_messages)
            .where(channel_messages.c.channel_id == post.channel_id, channel_messages.c.channel_seq == post.channel_seq)
            .values(thread_root_seq=post.thread_root_seq)
        )


def _fill_join(conn: Connection, channel_id: str, user_id: str, stream_seq: int, newest: int) -> None:
    """The member's row (if they are still a member) gets this join's facts; a later join overwrites them."""
    conn.execute(
        update(channel_members)
        .where(channel_members.c.channel_id == channel_id, channel_members.c.user_id == user_id)
        .values(joined_at_stream_seq=stream_seq, newest_seq_at_join=newest)
    )


def _fill_post_counts(conn: Connection, posts: Counter[str]) -> None:
    if not posts:
        return
    conn.execute(insert_ignoring(conn.dialect.name, channels), [{"channel_id": c} for c in posts])
    for channel_id, count in posts.items():
        conn.execute(update(channels).where(channels.c.channel_id == channel_id).values(posts=count))
