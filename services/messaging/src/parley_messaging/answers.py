"""Protobuf answers from the channel projection: its messages (parley_core.chat_messages builds every
`ChatMessage`), the one `Channel` converter and a thread's page. Reads only; what a viewer may see
is the channel's rule (Channel.view)."""

from __future__ import annotations

from parley.messaging.v1 import messaging_pb2

from parley_core.chat_messages import chat_message
from parley_core.contracts import POSTED_FIELDS
from parley_core.errors import InvalidArgument
from parley_core.same_named import same_named
from parley_messaging.domain import Channel
from parley_messaging.messages import MessageRecord, PostedMessage

# A thread is read in pages: a thread's replies, however many and long, would otherwise make one
# answer bigger than the 4 MiB a gRPC client takes, and nobody could read that thread any more.
DEFAULT_THREAD_PAGE = 100
MAX_THREAD_PAGE = 500
MAX_THREAD_PAGE_BYTES = 2 * 1024 * 1024


def to_proto(message: PostedMessage, record: MessageRecord | None = None) -> messaging_pb2.ChatMessage:
    return chat_message(
        **same_named(message, *POSTED_FIELDS),
        sent_at_ns=message.sent_at_unix_ns,
        redacted=message.redacted,
        edit_count=message.edit_count,
        reply_count=len(record.replies) if record else 0,
        reactions=record.reactions if record else {},
    )


def channel_proto(channel: Channel, viewer: str = "") -> messaging_pb2.Channel:
    return messaging_pb2.Channel(
        channel_id=channel.channel_id,
        name=channel.name,
        member_ids=sorted(channel.members),
        last_seq=channel.last_seq,
        encrypted=channel.encrypted,
        private=channel.private,
        direct=channel.direct,
        topic=channel.topic,
        roles={user: channel.role(user) for user in channel.members},
        hide_history_before_join=channel.hide_history_before_join,
        visible_from_seq=channel.view(viewer).first_seq,
        visible_from_position=channel.view(viewer).first_position,
        read_seq=channel.read_seq(viewer) if viewer in channel.members else 0,
        unread_count=channel.unread_count(viewer) if viewer in channel.members else 0,
    )


def thread_page(
    channel: Channel, viewer: str, root_seq: int, after_seq: int, limit: int
) -> messaging_pb2.ListThreadResponse:
    """A thread's root and its replies after `after_seq` that `viewer` may read, up to `limit`
    (0: DEFAULT_THREAD_PAGE) and MAX_THREAD_PAGE_BYTES (one reply at least)."""
    if limit > MAX_THREAD_PAGE:
        raise InvalidArgument(f"limit must be at most {MAX_THREAD_PAGE} (0 means {DEFAULT_THREAD_PAGE})")
    root = channel.readable(viewer, root_seq)
    view = channel.view(viewer)
    later = [seq for seq in root.replies if seq > after_seq and view.shows(seq)]
    page = messaging_pb2.ListThreadResponse(root=to_proto(root.current, root))
    size = page.ByteSize()
    for seq in later[: limit or DEFAULT_THREAD_PAGE]:
        reply = to_proto(channel.messages[seq].current, channel.messages[seq])
        size += reply.ByteSize()
        if size > MAX_THREAD_PAGE_BYTES and page.replies:
            break
        page.replies.append(reply)
    page.has_more = len(page.replies) < len(later)
    return page


def invitations_proto(channels: list[tuple[Channel, str]]) -> messaging_pb2.ListInvitationsResponse:
    """(channel, invited_by) pairs, in the order given."""
    return messaging_pb2.ListInvitationsResponse(
        invitations=[
            messaging_pb2.Invitation(
                channel_id=c.channel_id,
                channel_name=c.name,
                invited_by=invited_by,
                private=c.private,
                encrypted=c.encrypted,
                member_count=len(c.members),
                topic=c.topic,
            )
            for c, invited_by in channels
        ]
    )
