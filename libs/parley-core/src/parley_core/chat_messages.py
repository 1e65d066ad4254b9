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

from parley.messaging.v1 import messaging_pb2

Reactions = Mapping[str, Iterable[str]] | Iterable[tuple[str, Iterable[str]]]

# What a posted message carries by the same names wherever it goes: the MessagePosted event,
# messaging's PostedMessage, and chat_message() below.
POSTED_FIELDS = ("channel_id", "message_id", "sender_id", "sender_name", "channel_seq", "body", "thread_root_seq")


def chat_message(
    *,
    channel_id: str,
    channel_seq: int,
    message_id: str = "",
    sender_id: str = "",
    sender_name: str = "",
    body: str = "",
    sent_at_ns: int | None = None,
    position: int = 0,
    thread_root_seq: int = 0,
    reply_count: int = 0,
    edit_count: int = 0,
    edited: bool = False,
    redacted: bool = False,
    erased: bool = False,
    reactions: Reactions = (),
) -> messaging_pb2.ChatMessage:
    """`position`: the event's place in the channel's log (live stream only); `reply_count` and
    `edit_count` are messaging's, `erased` storage's; `reactions`: emoji -> user ids."""
    pairs = reactions.items() if isinstance(reactions, Mapping) else reactions
    message = messaging_pb2.ChatMessage(
        channel_id=channel_id,
        message_id=message_id,
        sender_id=sender_id,
        sender_name="" if erased else sender_name,
        channel_seq=channel_seq,
        body="" if redacted or erased else body,
        position=position,
        redacted=redacted,
        erased=erased,
        edited=edited,
        edit_count=edit_count,
        thread_root_seq=thread_root_seq,
        reply_count=reply_count,
        reactions=[messaging_pb2.ReactionCount(emoji=emoji, user_ids=sorted(users)) for emoji, users in sorted(pairs)],
    )
    if sent_at_ns is not None:
        message.sent_at.FromNanoseconds(sent_at_ns)
    return message
