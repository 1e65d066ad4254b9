"""The API's `ChatMessage`, built in one place: messaging's views, storage's history and the
gateway's live stream all answer with it.

The type is messaging's (parley.messaging.v1); its builder lives in parley_core, beside
visibility.py, because storage and the gateway build it from their own records and services
never import one another. Each caller passes the facts its record holds; the rules of the
message's shape are here: the send time from nanoseconds, reactions in a stable order, and no
text left on a message that was redacted or erased.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from google.protobuf.timestamp_pb2 import Timestamp
from parley.messaging.v1 import messaging_pb2

Reactions = Mapping[str, Iterable[str]] | Iterable[tuple[str, Iterable[str]]]


def chat_message(
    *,
    channel_id: str,
    channel_seq: int,
    message_id: str = "",
    sender_id: str = "",
    sender_name: str = "",
    body: str = "",
    sent_at_ns: int | None = None,
    sent_at: Timestamp | None = None,
    position: int = 0,
    thread_root_seq: int = 0,
    reply_count: int = 0,
    edit_count: int = 0,
    edited: bool = False,
    redacted: bool = False,
    erased: bool = False,
    reactions: Reactions = (),
    into: messaging_pb2.ChatMessage | None = None,
) -> messaging_pb2.ChatMessage:
    """`position`: the event's place in the channel's log (live stream only); `reply_count` and
    `edit_count` are messaging's, `erased` storage's; `reactions`: emoji -> user ids. The send
    time as nanoseconds, or as the event's own Timestamp (`sent_at`, copied as it is).

    `into`: an empty message to fill in place (a live stream's ClientEvent.message), which spares
    the copy that passing a finished message to a constructor makes.
    """
    message = messaging_pb2.ChatMessage() if into is None else into
    message.channel_id = channel_id
    message.message_id = message_id
    message.sender_id = sender_id
    message.sender_name = "" if erased else sender_name
    message.channel_seq = channel_seq
    message.body = "" if redacted or erased else body
    message.position = position
    message.redacted = redacted
    message.erased = erased
    message.edited = edited
    message.edit_count = edit_count
    message.thread_root_seq = thread_root_seq
    message.reply_count = reply_count
    if reactions:  # most messages have none: no sort, no type check
        pairs = reactions.items() if isinstance(reactions, Mapping) else reactions
        message.reactions.extend(
            messaging_pb2.ReactionCount(emoji=emoji, user_ids=sorted(users)) for emoji, users in sorted(pairs)
        )
    if sent_at is not None:
        message.sent_at.CopyFrom(sent_at)
    elif sent_at_ns is not None:
        message.sent_at.FromNanoseconds(sent_at_ns)
    return message
