"""What one live stream takes from the channel feed, without I/O: each event once, only what its
member may see, and the end of the stream when the member is removed."""

from __future__ import annotations

import pytest
from google.protobuf.message import Message
from parley.messaging.v1.events_pb2 import (
    ChannelCreated,
    MemberInvited,
    MemberJoined,
    MemberKicked,
    MessageEdited,
    MessagePosted,
    ReactionAdded,
    ReadMarkerMoved,
)

from parley_core.envelope import NewEvent, seal
from parley_core.errors import PermissionDenied
from parley_core.visibility import EVERYTHING, HistoryView
from parley_gateway.live import ChannelEvent, LiveBuffer, LiveSubscriber, channel_event_of


def event(payload: Message, position: int) -> ChannelEvent:
    envelope = seal(
        NewEvent("channel", "c1", payload, actor="x"), aggregate_version=1, producer="t@0", trace_context={}
    )
    return channel_event_of(envelope, position)


def stream(view: HistoryView, after: int = 0) -> LiveSubscriber:
    def allowed() -> None:
        pass

    return LiveSubscriber(user_id="bob", views={"c1": view}, after={"c1": after}, buffer=LiveBuffer(10), check=allowed)


async def taken(sub: LiveSubscriber) -> list[str]:
    out = []
    while sub.buffer.pending():
        item = await sub.buffer.take()
        out.append(item.WhichOneof("event") or "")
    return out


async def test_nothing_at_or_before_the_join_point_is_delivered_again() -> None:
    sub = stream(EVERYTHING, after=10)
    for position in (9, 10, 11, 12):  # the stream read up to 10 from the log itself
        sub.deliver(event(MessagePosted(channel_id="c1", channel_seq=position), position))
    assert [(await sub.buffer.take()).message.channel_seq for _ in range(2)] == [11, 12]
    assert sub.buffer.pending() == 0


async def test_a_hidden_history_shows_nothing_before_the_join_nor_about_earlier_messages() -> None:
    sub = stream(HistoryView(first_seq=3, first_position=20))
    sub.deliver(event(MemberKicked(channel_id="c1", user_id="carol", reason="secret"), 19))  # before the join
    sub.deliver(event(MemberJoined(channel_id="c1", user_id="bob"), 20))
    sub.deliver(event(MessageEdited(channel_id="c1", channel_seq=2, body="new text"), 21))
    sub.deliver(event(ReactionAdded(channel_id="c1", channel_seq=1, user_id="amy", emoji="+1"), 22))
    sub.deliver(event(ReadMarkerMoved(channel_id="c1", user_id="amy", channel_seq=2), 23))
    sub.deliver(event(MessagePosted(channel_id="c1", channel_seq=3, body="hello"), 24))
    sub.deliver(event(ReactionAdded(channel_id="c1", channel_seq=3, user_id="amy", emoji="+1"), 25))
    assert await taken(sub) == ["membership", "message", "reaction"]

    everything = stream(EVERYTHING)
    for n, payload in enumerate([MemberKicked(channel_id="c1", user_id="carol"), MessageEdited(channel_id="c1")]):
        everything.deliver(event(payload, n + 1))
    assert await taken(everything) == ["membership", "updated"]


async def test_removing_the_member_ends_the_stream_after_what_came_before() -> None:
    sub = stream(EVERYTHING)
    sub.deliver(event(MessagePosted(channel_id="c1", channel_seq=1), 1))
    sub.deliver(event(MemberKicked(channel_id="c1", user_id="carol"), 2))  # someone else
    sub.deliver(event(MemberKicked(channel_id="c1", user_id="bob"), 3))
    sub.deliver(event(MessagePosted(channel_id="c1", channel_seq=2), 4))
    assert (await sub.buffer.take()).message.channel_seq == 1
    assert (await sub.buffer.take()).membership.user_id == "carol"
    told = (await sub.buffer.take()).membership  # the member learns why the stream ends
    assert (told.user_id, told.change) == ("bob", "kicked")
    with pytest.raises(PermissionDenied, match="no longer in channel c1"):
        await sub.buffer.take()


async def test_a_stream_is_told_when_its_user_arrives_in_a_channel_it_does_not_follow() -> None:
    def elsewhere(payload: Message, position: int) -> ChannelEvent:
        envelope = seal(
            NewEvent("channel", "c2", payload, actor="amy"), aggregate_version=1, producer="t@0", trace_context={}
        )
        return channel_event_of(envelope, position)

    sub = stream(EVERYTHING)
    invited = elsewhere(MemberInvited(channel_id="c2", user_id="bob", invited_by="amy"), 5)
    started = elsewhere(ChannelCreated(channel_id="c2", creator_id="amy", direct=True, member_ids=["bob"]), 4)
    assert invited.arrivals == ("bob",)
    assert started.arrivals == ("amy", "bob")
    for arrival in (started, invited):
        sub.welcome(arrival)
    told = [(await sub.buffer.take()).membership for _ in range(2)]
    assert [(m.channel_id, m.user_id, m.change, m.actor_id, m.position) for m in told] == [
        ("c2", "bob", "joined", "amy", 4),
        ("c2", "bob", "invited", "amy", 5),
    ]
    sub.welcome(event(MemberJoined(channel_id="c1", user_id="bob"), 6))  # a channel it follows: told as usual
    assert sub.buffer.pending() == 0
