"""Token buckets, client addresses and the live buffer, without I/O (the admission decisions:
test_domain_admission.py)."""

from __future__ import annotations

import asyncio

import pytest
from parley.gateway.v1 import gateway_pb2
from parley.messaging.v1.events_pb2 import MemberJoined, MessageEdited, MessagePosted, MessageRedacted

from parley_core.errors import ResourceExhausted
from parley_core.rate import TokenBuckets
from parley_core.sources import budget_key, client_address
from parley_gateway.live import LiveBuffer, client_event
from parley_testing.clock import ManualClock


def test_bucket_allows_a_burst_then_says_how_long_to_wait() -> None:
    clock = ManualClock(100.0)
    buckets = TokenBuckets(rate=2.0, burst=3, clock=clock)
    assert [buckets.take("u") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("u") == pytest.approx(0.5)
    assert buckets.take("someone-else") == 0.0  # budgets are per key
    clock.now += 0.5
    assert buckets.take("u") == 0.0
    clock.now += 100
    assert [buckets.take("u") for _ in range(3)] == [0.0, 0.0, 0.0]  # never saves more than the burst
    assert buckets.take("u") > 0


def test_a_source_is_the_client_address_without_its_port() -> None:
    assert client_address("ipv4:10.0.0.5:51234") == "ipv4:10.0.0.5"
    assert client_address("ipv6:[::1]:4000") == "ipv6:[::1]"
    assert client_address("unix:/tmp/sock") == "unix:/tmp/sock"


def test_ipv6_addresses_share_a_budget_per_64_and_ipv4_per_address() -> None:
    assert budget_key("ipv4:10.0.0.5") == "ipv4:10.0.0.5"
    assert budget_key("ipv6:[2001:db8:1:2:aaaa::1]") == budget_key("ipv6:[2001:db8:1:2:bbbb::9]")
    assert budget_key("ipv6:[2001:db8:1:2::1]") != budget_key("ipv6:[2001:db8:1:3::1]")
    # An IPv4 client seen on a dual-stack socket keeps a budget of its own.
    assert budget_key("ipv6:[::ffff:10.0.0.5]") != budget_key("ipv6:[::ffff:10.0.0.6]")


async def test_live_buffer_holds_its_capacity_then_ends_in_a_resync() -> None:
    buffer = LiveBuffer(3)
    events = [gateway_pb2.ClientEvent(ready=gateway_pb2.Ready(channel_ids=[str(i)])) for i in range(10)]
    for event in events:
        buffer.offer(event)
    assert buffer.overflowed
    assert buffer.pending() == 4  # three events and the resync marker, however many were offered
    assert [(await buffer.take()).ready.channel_ids[0] for _ in range(3)] == ["0", "1", "2"]
    with pytest.raises(ResourceExhausted, match="resume"):
        await asyncio.wait_for(buffer.take(), 1)


def test_client_sees_messages_edits_and_redactions_with_their_position() -> None:
    posted = client_event(MessagePosted(channel_id="c", message_id="m", channel_seq=4, body="hi"), 17)
    assert posted is not None
    assert (posted.message.body, posted.message.channel_seq, posted.message.position) == ("hi", 4, 17)
    edited = client_event(MessageEdited(channel_id="c", message_id="m", channel_seq=4, body="hey"), 18)
    assert edited is not None
    assert (edited.updated.body, edited.updated.position) == ("hey", 18)
    assert edited.updated.edited  # shown "(edited)" live, not only after a reload
    redacted = client_event(MessageRedacted(channel_id="c", message_id="m", channel_seq=4), 19)
    assert redacted is not None
    assert redacted.updated.redacted
    assert redacted.updated.body == ""
    joined = client_event(MemberJoined(channel_id="c", user_id="u"), 20)
    assert joined is not None
    assert (joined.membership.change, joined.membership.user_id, joined.membership.position) == ("joined", "u", 20)
    assert client_event(MessagePosted(channel_id="c", message_id="m", channel_seq=1, thread_root_seq=0), 1) is not None
