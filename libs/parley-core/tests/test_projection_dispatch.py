"""The one dispatcher behind every replay, against a real nats-server with Parley's users.

A projection handler that fails halts its replay where it is (nothing after the failed event is
applied, read-your-writes waiters are told at once), while foreign, undecodable and unknown
events pass without halting. A process's one replay of a stream (EventBus.follow) feeds every
projection of it, in order, from a single consumer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
from parley.common.v1.envelope_pb2 import EventEnvelope
from parley.messaging.v1.events_pb2 import MessagePosted

from parley_core.bus import EventBus, EventHandler, Halt, ProjectionHalted, ReceivedEvent
from parley_core.bus_parking import FOREIGN_EVENT
from parley_core.envelope import NewEvent, open_payload
from parley_core.errors import Unavailable
from parley_core.projection_dispatch import subject_matches
from parley_core.topology import CHANNELS_FILTER, MESSAGING_FILTER, STREAMS_BY_NAME, channel_subject, parked_subject
from parley_testing.nats import NatsTestServer
from parley_testing.waiting import until

pytestmark = pytest.mark.asyncio

TIMEOUT_S = 10.0


@pytest_asyncio.fixture
async def bus(nats_server: NatsTestServer) -> AsyncIterator[EventBus]:
    """The messaging service's bus, with MSG created as it does; halts are recorded."""
    messaging = EventBus(await nats_server.connect("messaging"), service="messaging", producer="messaging@test")
    await messaging.ensure_streams([STREAMS_BY_NAME["MSG"], STREAMS_BY_NAME["PARKED"]])
    try:
        yield messaging
    finally:
        await messaging.stop_consumers()


def posted(channel_id: str, body: str) -> NewEvent:
    payload = MessagePosted(channel_id=channel_id, body=body, sender_id="u1")
    return NewEvent(aggregate_type="channel", aggregate_id=channel_id, payload=payload, actor="u1")


async def append(bus: EventBus, event: NewEvent) -> int:
    subject = channel_subject(event.aggregate_id)
    return (await bus.append(subject, event, aggregate_version=1, expected_last_subject_seq=None)).stream_seq


def failing_on(bad_body: str, applied: list[ReceivedEvent]) -> EventHandler:
    """A projection with a bug: it raises on the message with this body."""

    async def apply(event: ReceivedEvent) -> None:
        payload = open_payload(event.envelope)
        if isinstance(payload, MessagePosted) and payload.body == bad_body:
            raise RuntimeError("projection bug")
        applied.append(event)

    return apply


async def test_a_failing_projection_halts_its_replay_instead_of_skipping_the_event(
    bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    seqs = [await append(bus, posted("c1", body)) for body in ("m0", "bad", "m2", "m3")]
    halts: list[Halt] = []

    async def on_halt(halt: Halt) -> None:
        halts.append(halt)

    bus.on_halt = on_halt
    applied: list[ReceivedEvent] = []
    replay = await bus.replay(stream="MSG", filter_subject=CHANNELS_FILTER, handler=failing_on("bad", applied))

    with pytest.raises(ProjectionHalted) as halted:
        await replay.wait_caught_up(TIMEOUT_S)

    # Stopped at the failed event: nothing after it applied, its position before it.
    assert [e.stream_seq for e in applied] == [seqs[0]]
    assert replay.last_seq == seqs[0]
    assert halts == [bus.halted] == [Halt("MSG", seqs[1], "parley.messaging.v1.MessagePosted", halts[0].error)]
    assert "projection bug" in halts[0].error
    assert isinstance(halted.value, Unavailable)  # answered UNAVAILABLE, with what to do
    assert f"stopped applying MSG at stream sequence {seqs[1]}" in str(halted.value)
    assert "retry on another instance" in str(halted.value)
    assert "projection bug" not in str(halted.value)  # the error itself stays in the log
    [line] = [r for r in caplog.records if r.levelname == "ERROR" and "projection halted" in r.getMessage()]
    assert f"stream MSG, sequence {seqs[1]}, event type parley.messaging.v1.MessagePosted" in line.getMessage()
    assert "projection bug" in line.getMessage()

    # Read-your-writes callers are told at once rather than left to time out.
    with pytest.raises(ProjectionHalted):
        await replay.wait_for_seq(seqs[3], timeout=3 * TIMEOUT_S)
    # An event that arrives later is not applied either: a healthy replay sees it, the halted one never.
    later = await append(bus, posted("c1", "later"))
    healthy: list[ReceivedEvent] = []
    other = await bus.replay(stream="MSG", filter_subject=CHANNELS_FILTER, handler=failing_on("none", healthy))
    await other.wait_for_seq(later, TIMEOUT_S)
    assert [e.stream_seq for e in applied] == [seqs[0]]
    assert replay.last_seq == seqs[0]


async def test_a_waiter_already_waiting_is_told_of_the_halt(bus: EventBus) -> None:
    applied: list[ReceivedEvent] = []
    replay = await bus.replay(stream="MSG", filter_subject=CHANNELS_FILTER, handler=failing_on("bad", applied))
    await replay.wait_caught_up(TIMEOUT_S)
    waiter = asyncio.create_task(replay.wait_for_seq(3, timeout=3 * TIMEOUT_S))
    for body in ("m0", "bad", "m2"):
        await append(bus, posted("c1", body))

    with pytest.raises(ProjectionHalted):
        await asyncio.wait_for(waiter, TIMEOUT_S)
    assert [e.stream_seq for e in applied] == [1]


async def test_an_own_write_that_fails_to_apply_halts_the_projection(bus: EventBus) -> None:
    applied: list[ReceivedEvent] = []
    replay = await bus.replay(stream="MSG", filter_subject=CHANNELS_FILTER, handler=failing_on("bad", applied))
    await replay.wait_caught_up(TIMEOUT_S)
    subject = channel_subject("c1")
    bad = await bus.append(subject, posted("c1", "bad"), aggregate_version=1, expected_last_subject_seq=0)

    with pytest.raises(ProjectionHalted):
        await replay.apply_own(bad)
    good = await bus.append(subject, posted("c1", "good"), aggregate_version=2, expected_last_subject_seq=None)
    with pytest.raises(ProjectionHalted):
        await replay.apply_own(good)  # nothing more is applied once halted, own writes neither
    assert applied == []
    assert bus.halted is not None
    assert bus.halted.stream_seq == bad.stream_seq


async def test_an_event_of_a_type_this_version_does_not_know_passes_without_halting(bus: EventBus) -> None:
    """A newer version's event (its owner's package, a type not loaded here) during a roll-out."""
    newer = EventEnvelope(event_id="newer-1", event_type="parley.messaging.v1.SomethingAddedLater", aggregate_id="c1")
    await bus.js.publish(channel_subject("c1"), newer.SerializeToString())
    after = await append(bus, posted("c1", "after"))
    applied: list[ReceivedEvent] = []
    replay = await bus.replay(stream="MSG", filter_subject=CHANNELS_FILTER, handler=failing_on("bad", applied))

    await replay.wait_for_seq(after, TIMEOUT_S)
    assert [e.stream_seq for e in applied] == [after]
    assert bus.halted is None


async def _parked_reason_after_two_replays(
    bus: EventBus,
    nats_server: NatsTestServer,
    forged: EventEnvelope,
    projection: Callable[[list[ReceivedEvent]], EventHandler],
) -> str:
    """`forged` on a channel's subject, then an event after it, replayed twice (as a restart does):
    the projection sees only the event after it, nothing halts, and the forged one is parked as a
    foreign event. Its parked copy's reason."""
    seq = (await bus.js.publish(channel_subject("c1"), forged.SerializeToString())).seq
    after = await append(bus, posted("c1", "after"))
    applied: list[ReceivedEvent] = []
    replays = [
        await bus.replay(stream="MSG", filter_subject=CHANNELS_FILTER, handler=projection(applied)) for _ in range(2)
    ]

    for replay in replays:
        await replay.wait_for_seq(after, TIMEOUT_S)
    assert [e.stream_seq for e in applied] == [after, after]
    assert bus.halted is None
    platform = (await nats_server.connect("platform")).jetstream()
    parked = await platform.get_last_msg("PARKED", f"{parked_subject('messaging', 'MSG')}.{seq}")
    assert parked.headers is not None
    assert parked.headers["Parley-Parked-Kind"] == FOREIGN_EVENT
    return parked.headers["Parley-Parked-Reason"]


async def test_an_owner_type_whose_payload_is_not_that_protobuf_is_parked_once_and_never_halts(
    bus: EventBus, nats_server: NatsTestServer
) -> None:
    """Red-team F1: a stolen writer's credential appends a type the owner writes with junk
    payload bytes; handled, it would halt every reader's projection for good."""
    junk = EventEnvelope(
        event_id="junk-1",
        event_type="parley.messaging.v1.MessagePosted",
        aggregate_id="c1",
        payload=b"\xff\xff\xff\xff",
    )
    reason = await _parked_reason_after_two_replays(bus, nats_server, junk, lambda applied: failing_on("bad", applied))

    assert "undecodable payload: 'parley.messaging.v1.MessagePosted'" in reason
    platform = (await nats_server.connect("platform")).jetstream()
    assert (await platform.stream_info("PARKED")).state.messages == 1  # parked once, not per replay


def converting_times(applied: list[ReceivedEvent]) -> EventHandler:
    """A projection that converts an event's times, as the gateway's live feed and every AUTH
    reader do: a time outside the years 1 to 9999 raises there."""

    async def apply(event: ReceivedEvent) -> None:
        event.envelope.occurred_at.ToNanoseconds()
        payload = open_payload(event.envelope)
        if isinstance(payload, MessagePosted):
            payload.sent_at.ToNanoseconds()
        applied.append(event)

    return apply


@pytest.mark.parametrize("where", ["envelope.occurred_at", "payload.sent_at"])
async def test_an_owner_type_with_a_time_no_clock_writes_is_parked_once_and_never_halts(
    bus: EventBus, nats_server: NatsTestServer, where: str
) -> None:
    """Red-team re-check: the payload parses, but a Timestamp of 2**62 seconds raises in every
    reader that converts it (the gateway's feed, every service's AUTH projections)."""
    payload = MessagePosted(channel_id="c1", body="from the far future", sender_id="u1")
    envelope = EventEnvelope(event_id="far-1", event_type="parley.messaging.v1.MessagePosted", aggregate_id="c1")
    if where == "payload.sent_at":
        payload.sent_at.seconds = 2**62
    else:
        envelope.occurred_at.seconds = 2**62
    envelope.payload = payload.SerializeToString()

    reason = await _parked_reason_after_two_replays(bus, nats_server, envelope, converting_times)

    field = "occurred_at" if where == "envelope.occurred_at" else "sent_at"
    assert f"a time no clock writes: {field} of 'parley.messaging.v1.MessagePosted'" in reason


async def test_one_replay_per_stream_feeds_each_projection_in_order(bus: EventBus, nats_server: NatsTestServer) -> None:
    first = await append(bus, posted("c1", "m0"))
    calls: list[tuple[str, int]] = []

    def projection(name: str) -> EventHandler:
        async def apply(event: ReceivedEvent) -> None:
            calls.append((name, event.stream_seq))

        return apply

    replay = bus.follow(stream="MSG", filter_subject=MESSAGING_FILTER, handler=projection("all"))
    assert (
        bus.follow(
            stream="MSG", filter_subject=MESSAGING_FILTER, handler=projection("c2"), subjects="parley.msg.channel.c2"
        )
        is replay
    )
    assert bus.follow(stream="MSG", filter_subject=MESSAGING_FILTER, handler=projection("then")) is replay
    with pytest.raises(ValueError, match=r"reads MSG as parley\.msg\.>"):
        bus.follow(stream="MSG", filter_subject=CHANNELS_FILTER, handler=projection("other"))
    await bus.start_following()
    await bus.start_following()  # started once
    await replay.wait_caught_up(TIMEOUT_S)
    second = await append(bus, posted("c2", "m1"))
    await replay.wait_for_seq(second, TIMEOUT_S)

    assert calls == [("all", first), ("then", first), ("all", second), ("c2", second), ("then", second)]
    platform = (await nats_server.connect("platform")).jetstream()
    assert (await platform.stream_info("MSG")).state.consumer_count == 1
    # A projection added once the replay runs would miss what it applied: refused.
    with pytest.raises(RuntimeError, match="has started"):
        bus.follow(stream="MSG", filter_subject=MESSAGING_FILTER, handler=projection("late"))

    # Read-your-writes reaches every projection of the stream at once.
    mine = await bus.append(
        channel_subject("c2"), posted("c2", "mine"), aggregate_version=2, expected_last_subject_seq=second
    )
    await replay.apply_own(mine)
    assert calls[-3:] == [("all", mine.stream_seq), ("c2", mine.stream_seq), ("then", mine.stream_seq)]


async def test_a_failing_projection_halts_the_shared_replay_for_all_of_them(bus: EventBus) -> None:
    seqs = [await append(bus, posted("c1", body)) for body in ("m0", "bad", "m2")]
    before: list[ReceivedEvent] = []
    failing: list[ReceivedEvent] = []

    async def keep(event: ReceivedEvent) -> None:
        before.append(event)

    replay = bus.follow(stream="MSG", filter_subject=MESSAGING_FILTER, handler=keep)
    bus.follow(stream="MSG", filter_subject=MESSAGING_FILTER, handler=failing_on("bad", failing))
    await bus.start_following()
    await until(lambda: bus.halted is not None, "the halt", TIMEOUT_S)

    # The one before it in order applied the failed event; nothing applied anything after it.
    assert [e.stream_seq for e in before] == seqs[:2]
    assert [e.stream_seq for e in failing] == seqs[:1]
    assert replay.last_seq == seqs[0]
    with pytest.raises(ProjectionHalted):
        await replay.wait_for_seq(seqs[2], TIMEOUT_S)


async def test_subject_matching_follows_nats_wildcards() -> None:
    assert subject_matches("parley.auth.key.>", "parley.auth.key.k1")
    assert subject_matches("parley.auth.key.>", "parley.auth.key.k1.more")
    assert not subject_matches("parley.auth.key.>", "parley.auth.key")
    assert not subject_matches("parley.auth.key.>", "parley.auth.user.u1")
    assert subject_matches("parley.*.key.k1", "parley.auth.key.k1")
    assert not subject_matches("parley.*.key", "parley.auth.key.k1")
    assert subject_matches("parley.auth.key.k1", "parley.auth.key.k1")
