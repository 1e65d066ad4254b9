"""Events as a consumer receives them, for tests that feed a projection or the archive directly."""

from __future__ import annotations

from typing import Any

from parley.messaging.v1.events_pb2 import MessagePosted

from parley_core.bus import ReceivedEvent
from parley_core.envelope import NewEvent, seal
from parley_core.topology import channel_subject

__all__ = ["message_posted", "received"]


def received(
    event: NewEvent, *, stream_seq: int, aggregate_version: int | None = None, stream: str = "MSG", subject: str = ""
) -> ReceivedEvent:
    """`event` as delivered after it was appended at `stream_seq` (first delivery, no headers).

    The aggregate version defaults to the stream position, and a channel's subject to its own.
    """
    if not subject and event.aggregate_type != "channel":
        raise ValueError(f"give the subject of a {event.aggregate_type} event")
    envelope = seal(
        event,
        aggregate_version=stream_seq if aggregate_version is None else aggregate_version,
        producer="test@0",
        trace_context={},
    )
    return ReceivedEvent(envelope, subject or channel_subject(event.aggregate_id), stream, stream_seq, 1, {})


def message_posted(
    channel_id: str,
    channel_seq: int,
    sender: str,
    body: str,
    *,
    message_id: str = "",
    sender_name: str = "",
    **more: Any,
) -> MessagePosted:
    """A post as messaging records it: its id `<channel>-<seq>` and the sender's name their id
    unless given; `more` sets the rest (sent_at, thread_root_seq…)."""
    return MessagePosted(
        channel_id=channel_id,
        message_id=message_id or f"{channel_id}-{channel_seq}",
        sender_id=sender,
        sender_name=sender_name or sender,
        channel_seq=channel_seq,
        body=body,
        **more,
    )
