"""Messaging rebuilds from a MSG stream whose redacted and expired posts storage deleted."""

from __future__ import annotations

from google.protobuf.message import Message
from parley.messaging.v1.events_pb2 import (
    ChannelCreated,
    MessageEdited,
    MessagePosted,
    MessageRedacted,
    MessagesExpired,
    ReactionAdded,
)

from parley_core.bus import ReceivedEvent
from parley_core.envelope import NewEvent
from parley_messaging.service import MessagingApp
from parley_testing.events import received


def at(stream_seq: int, payload: Message) -> ReceivedEvent:
    """The event at `stream_seq` of channel c1, whose aggregate version is its position here."""
    return received(
        NewEvent(aggregate_type="channel", aggregate_id="c1", payload=payload, actor="alice"), stream_seq=stream_seq
    )


def post(n: int) -> MessagePosted:
    return MessagePosted(channel_id="c1", message_id=f"m{n}", sender_id="alice", channel_seq=n, body=f"text {n}")


async def test_rebuilds_from_a_stream_with_holes_keeping_every_number_taken() -> None:
    written = [
        at(1, ChannelCreated(channel_id="c1", name="general", creator_id="alice")),
        at(2, post(1)),  # expired: deleted
        at(3, post(2)),
        at(4, MessageEdited(channel_id="c1", message_id="m1", channel_seq=1, body="edited 1")),  # expired: deleted
        at(5, MessagesExpired(channel_id="c1", channel_seqs=[1], retention_days=30)),
        at(6, post(3)),  # redacted: deleted
        at(7, ReactionAdded(channel_id="c1", channel_seq=3, user_id="bob", emoji="+1")),
        at(8, MessageRedacted(channel_id="c1", message_id="m3", channel_seq=3, redactor_id="alice")),
    ]
    left_in_stream = [e for e in written if e.stream_seq not in (2, 4, 6)]
    app = MessagingApp()
    for event in left_in_stream:
        await app._apply(event)

    channel = app.channels.get("c1")
    assert sorted(channel.messages) == [2, 3]
    assert channel.messages[2].current.body == "text 2"
    redacted = channel.messages[3].current
    assert (redacted.redacted, redacted.body, redacted.message_id) == (True, "", "m3")
    assert channel.last_seq == 3  # the newest post is gone from the stream; the next one is #4
    assert (channel.version, channel.last_stream_seq) == (8, 8)  # the append guard: the marker's position

    # The same projection as from the whole stream, where nothing was deleted.
    whole = MessagingApp()
    for event in written:
        await whole._apply(event)
    full = whole.channels.get("c1")
    assert (sorted(full.messages), full.last_seq, full.version) == ([2, 3], 3, 8)
    assert full.messages[3].current.redacted


async def test_an_event_type_it_does_not_know_still_moves_the_append_guard() -> None:
    app = MessagingApp()
    await app._apply(at(1, ChannelCreated(channel_id="c1", name="general", creator_id="alice")))
    newer = at(2, post(1))
    newer.envelope.event_type = "parley.messaging.v1.SomethingNewer"  # appended by a newer release
    await app._apply(newer)
    channel = app.channels.get("c1")
    assert (channel.last_stream_seq, channel.version) == (2, 2)  # its next append is not refused forever
    assert channel.messages == {}
