"""What archiving a messaging event changes in storage's own tables (the read model history is
served from, retention policies, texts to delete from the log), in the transaction that archives it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import cache
from typing import Any

from google.protobuf.message import Message
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
from sqlalchemy import Connection, insert, select, update

from parley_core.bus import ReceivedEvent
from parley_core.bus_events import Refused
from parley_storage.archive import read_model
from parley_storage.archive.db import ArchiveDb, insert_ignoring
from parley_storage.archive.records import EXPIRED, EXPIRED_BY_RETENTION, REDACTED, LogDeletion
from parley_storage.schema import channel_members, channel_messages, events, log_deletions, retention_policies

QUEUED_LOG_DELETIONS = "parley_queued_log_deletions"  # conn.info: texts this transaction queued
TEXT_EVENTS = (MessagePosted.DESCRIPTOR.full_name, MessageEdited.DESCRIPTOR.full_name)


def post_row(post: MessagePosted, item: ReceivedEvent) -> dict[str, object]:
    """A new post's row in channel_messages: history's index of the channel's messages."""
    return {
        "channel_id": post.channel_id,
        "channel_seq": post.channel_seq,
        "message_id": post.message_id,
        "sender_id": post.sender_id,
        "sent_at_ns": post.sent_at.ToNanoseconds(),
        "stream": item.stream,
        "stream_seq": item.stream_seq,
        "thread_root_seq": post.thread_root_seq,
    }


def insert_posts(conn: Connection, messages: Sequence[dict[str, object]]) -> None:
    """New posts' rows in channel_messages, counted in their channels' read model. A post whose
    number another message holds already is refused (the consumer parks it): messaging numbers
    each message once, so only a forger writes one, and neither row nor count may change for it.
    A copy of a post archived already (the same message at another stream position) adds nothing."""
    written = len(conn.execute(_inserted_posts(conn.dialect.name), messages).all())
    if written != len(messages):  # some number was taken already: which, and by what?
        messages = [m for m in messages if _written_now(conn, m)]
    if messages:
        read_model.record_posts(conn, messages)


@cache
def _inserted_posts(dialect: str) -> Any:
    """The insert that skips a taken number and returns the rows it wrote: one statement per
    batch, built once (building statements per batch costs storage CPU, see writer.py)."""
    return insert_ignoring(dialect, channel_messages).returning(channel_messages.c.channel_seq)


def _written_now(conn: Connection, message: dict[str, object]) -> bool:
    """Whether `message`'s row is the one this transaction wrote; refuses one another message holds."""
    held = conn.execute(
        select(channel_messages.c.message_id, channel_messages.c.stream, channel_messages.c.stream_seq).where(
            channel_messages.c.channel_id == message["channel_id"],
            channel_messages.c.channel_seq == message["channel_seq"],
        )
    ).one()
    if (held.stream, held.stream_seq) == (message["stream"], message["stream_seq"]):
        return True
    if held.message_id != message["message_id"]:
        raise Refused(
            f"message {message['message_id']} claims number {message['channel_seq']} of channel"
            f" {message['channel_id']}, which message {held.message_id} holds (archived from"
            f" {held.stream} #{held.stream_seq}); not archived over it"
        )
    return False


def project(db: ArchiveDb, conn: Connection, item: ReceivedEvent, payload: Message | None, *, late: bool) -> None:
    """Apply one archived event (already inserted) to storage's tables. ``late``: it arrived after
    events with higher sequences of its stream were archived (a retry)."""
    if isinstance(payload, MessagePosted):
        insert_posts(conn, [post_row(payload, item)])
        if late:
            read_model.record_late_post(conn, payload.channel_id, item.stream_seq)
    elif isinstance(payload, ChannelCreated):
        hides = payload.hide_history_before_join
        read_model.record_channel(conn, payload.channel_id, hides_history=hides, late=late)
        for user_id in (payload.creator_id, *payload.member_ids):  # member_ids: direct conversations
            read_model.record_join(conn, payload.channel_id, user_id, item.stream_seq, late=late)
    elif isinstance(payload, MemberJoined):
        read_model.record_join(conn, payload.channel_id, payload.user_id, item.stream_seq, late=late)
    elif isinstance(payload, ReactionAdded | ReactionRemoved):
        read_model.record_reaction(db, conn, payload, item.stream, item.stream_seq)
    elif isinstance(payload, MessageEdited):
        _apply_edit(conn, payload, item)
    elif isinstance(payload, MessageRedacted):
        _remove_texts(db, conn, payload.channel_id, [payload.channel_seq], reason=REDACTED)
    elif isinstance(payload, MessagesExpired):
        _remove_texts(db, conn, payload.channel_id, payload.channel_seqs, reason=EXPIRED_BY_RETENTION)
    elif isinstance(payload, MemberLeft | MemberKicked | MemberBanned):
        _remove_member(conn, payload)
    elif isinstance(payload, ChannelRetentionSet):
        # Messaging's record is the policy; the retention job reads this copy of it.
        set_at_ns = item.envelope.occurred_at.ToNanoseconds()
        set_retention(conn, payload.channel_id, payload.days, set_by=payload.set_by, set_at_ns=set_at_ns)
    if isinstance(payload, MessagePosted | MessageEdited) and late:
        # Retried after its redaction or expiry was archived (out of order): remove this text too.
        reason = read_model.removal_of(conn, payload.channel_id, payload.channel_seq)
        if reason is not None:
            _remove_texts(db, conn, payload.channel_id, [payload.channel_seq], reason=reason)


def set_retention(conn: Connection, channel_id: str, days: int, *, set_by: str, set_at_ns: int) -> None:
    conn.execute(retention_policies.delete().where(retention_policies.c.channel_id == channel_id))
    if days:
        conn.execute(
            insert(retention_policies).values(channel_id=channel_id, days=days, set_by=set_by, set_at_ns=set_at_ns)
        )


def _remove_member(conn: Connection, left: MemberLeft | MemberKicked | MemberBanned) -> None:
    """A member who left (or was removed) reads no more history of the channel."""
    conn.execute(
        channel_members.delete().where(
            channel_members.c.channel_id == left.channel_id, channel_members.c.user_id == left.user_id
        )
    )


def _apply_edit(conn: Connection, edit: MessageEdited, item: ReceivedEvent) -> None:
    """History shows the newest text: point the message's row at this edit (keeping its thread).

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
    shown = [(row.stream, row.stream_seq)] if row is not None else []
    read_model.record_texts(conn, edit.channel_id, edit.channel_seq, [*shown, (item.stream, item.stream_seq)])
    if row is not None and row.key_id == EXPIRED:
        _blank(conn, LogDeletion(item.stream, item.stream_seq, item.envelope.event_id), reason=REDACTED)
        return
    if row is not None and row.stream_seq < item.stream_seq:
        conn.execute(
            update(channel_messages)
            .where(channel_messages.c.channel_id == edit.channel_id, channel_messages.c.channel_seq == edit.channel_seq)
            .values(stream=item.stream, stream_seq=item.stream_seq)
        )


def _remove_texts(
    db: ArchiveDb, conn: Connection, channel_id: str, channel_seqs: Sequence[int], *, reason: str
) -> None:
    """A redaction or an expiry: every archived text of these messages (post and edits) loses
    its content and is queued for deletion from the log; expired messages also leave history.
    The events keep their place in the archive, and the marker keeps the fact."""
    for text in read_model.texts_to_remove(db, conn, channel_id, channel_seqs):
        _blank(conn, LogDeletion(text.stream, text.stream_seq, text.event_id), reason=reason)
    read_model.record_removal(conn, channel_id, channel_seqs, reason=reason)


def _blank(conn: Connection, text: LogDeletion, *, reason: str) -> None:
    """Remove one text's content from the archive and queue its deletion from the log, together."""
    conn.execute(
        update(events)
        .where(events.c.stream == text.stream, events.c.stream_seq == text.stream_seq)
        .values(envelope=b"", key_id=EXPIRED)
    )
    row = {"stream": text.stream, "stream_seq": text.stream_seq, "event_id": text.event_id}
    conn.execute(
        insert_ignoring(conn.dialect.name, log_deletions), {**row, "reason": reason, "recorded_at_ns": time.time_ns()}
    )
    conn.info[QUEUED_LOG_DELETIONS] = conn.info.get(QUEUED_LOG_DELETIONS, 0) + 1
