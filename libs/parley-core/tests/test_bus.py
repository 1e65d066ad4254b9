"""The JetStream event bus against a real, TLS-only nats-server with Parley's per-service users.

The messaging user owns MSG and appends; the storage user reads MSG through a durable consumer
and parks poison events; the platform user inspects PARKED, as an operator would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import nats.js.errors
import pytest
import pytest_asyncio
from nats.js import api
from parley.auth.v1.events_pb2 import UserRegistered
from parley.messaging.v1.events_pb2 import MessagePosted

from parley_core import telemetry
from parley_core.bus import (
    FOREIGN_EVENT,
    Appended,
    AppendNotMade,
    AppendOutcomeUnknown,
    ConcurrencyConflict,
    EventBus,
    ReceivedEvent,
    Refused,
    Replay,
    RetryLater,
    durable_config,
    foreign_type,
)
from parley_core.bus_pull import Pulls
from parley_core.config import Settings
from parley_core.deadline import answering_within
from parley_core.envelope import NewEvent, decode, open_payload, seal
from parley_core.errors import OutcomeUnknown
from parley_core.topology import (
    CHANNELS_FILTER,
    PARKED_MAX_BYTES,
    PARKED_MAX_MSGS,
    STREAMS_BY_NAME,
    ConsumerSpec,
    channel_subject,
    parked_subject,
)
from parley_testing.events import received
from parley_testing.nats import NatsTestServer
from parley_testing.waiting import eventually, until

pytestmark = pytest.mark.asyncio

TIMEOUT_S = 10.0
MSG = STREAMS_BY_NAME["MSG"]
PARKED = STREAMS_BY_NAME["PARKED"]
DURABLE = "storage-archive-msg"  # storage's own: its NATS user may use no other

T = TypeVar("T")


def posted(channel_id: str, body: str) -> NewEvent:
    return NewEvent(
        aggregate_type="channel",
        aggregate_id=channel_id,
        payload=MessagePosted(channel_id=channel_id, body=body, sender_id="u1"),
        actor="u1",
    )


@dataclass
class Recorder:
    """What a handler saw, with a way to wait until it has seen enough."""

    calls: list[list[ReceivedEvent]] = field(default_factory=list)
    applied: list[ReceivedEvent] = field(default_factory=list)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def record(self, batch: Sequence[ReceivedEvent], *, applied: bool) -> None:
        async with self._changed:
            self.calls.append(list(batch))
            if applied:
                self.applied.extend(batch)
            self._changed.notify_all()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = TIMEOUT_S) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), timeout)

    def applied_ids(self) -> list[str]:
        return [e.envelope.event_id for e in self.applied]


@pytest_asyncio.fixture
async def bus(nats_server: NatsTestServer) -> AsyncIterator[EventBus]:
    """The messaging service's bus, with MSG and the shared PARKED stream created as it does."""
    nc = await nats_server.connect("messaging")
    messaging = EventBus(nc, service="messaging", producer="messaging@test")
    await messaging.ensure_streams([MSG, PARKED])
    try:
        yield messaging
    finally:
        await messaging.stop_consumers()


@pytest_asyncio.fixture
async def storage_bus(nats_server: NatsTestServer, bus: EventBus) -> AsyncIterator[EventBus]:
    nc = await nats_server.connect("storage")
    storage = EventBus(nc, service="storage", producer="storage@test")
    try:
        yield storage
    finally:
        await storage.stop_consumers()


async def append_unconditionally(bus: EventBus, event: NewEvent, version: int) -> int:
    """Append to the event's own channel without an expectation; return its stream sequence."""
    appended = await bus.append(
        channel_subject(event.aggregate_id), event, aggregate_version=version, expected_last_subject_seq=None
    )
    return appended.stream_seq


def consumer_spec(max_deliver: int = 3) -> ConsumerSpec:
    return ConsumerSpec(stream="MSG", durable=DURABLE, service="storage", filter_subject=">", max_deliver=max_deliver)


# --- topology ---------------------------------------------------------------------------------


async def test_ensure_streams_is_idempotent(bus: EventBus) -> None:
    await bus.ensure_streams([MSG, PARKED])
    await bus.ensure_streams([MSG, PARKED])

    for spec in (MSG, PARKED):
        info = await bus.js.stream_info(spec.name)
        assert info.config.subjects == list(spec.subjects)
        assert info.config.duplicate_window == pytest.approx(spec.duplicate_window_s)
        assert info.config.storage == api.StorageType.FILE
        assert info.config.retention == api.RetentionPolicy.LIMITS
        assert info.config.allow_direct is True


async def test_the_platform_brings_a_drifted_stream_back_and_a_service_takes_it_as_it_is(
    nats_server: NatsTestServer,
) -> None:
    """A stream's settings are the platform's: its NATS user may re-configure a stream, a
    service's may not (nats_accounts.permissions_for), so a service starting against a stream the
    platform set otherwise neither changes it nor fails."""
    platform = EventBus(await nats_server.connect("platform"), service="platform", producer="test@0")
    await platform.js.add_stream(name="MSG", subjects=list(MSG.subjects), duplicate_window=5.0)
    messaging = EventBus(await nats_server.connect("messaging"), service="messaging", producer="messaging@test")

    await messaging.ensure_streams([MSG])

    assert (await platform.js.stream_info("MSG")).config.duplicate_window == pytest.approx(5.0)

    await platform.ensure_streams([MSG])

    info = await platform.js.stream_info("MSG")
    assert info.config.duplicate_window == pytest.approx(MSG.duplicate_window_s)
    assert info.config.allow_direct is True


# --- appends ----------------------------------------------------------------------------------


async def test_append_refuses_a_stale_expected_subject_sequence(bus: EventBus) -> None:
    subject = channel_subject("c-conc")

    first = await bus.append(subject, posted("c-conc", "1"), aggregate_version=1, expected_last_subject_seq=0)
    with pytest.raises(ConcurrencyConflict):
        await bus.append(subject, posted("c-conc", "1 again"), aggregate_version=1, expected_last_subject_seq=0)
    # Another aggregate moves the stream on; the expectation is about this subject only.
    other = await bus.append(
        channel_subject("c-other"), posted("c-other", "x"), aggregate_version=1, expected_last_subject_seq=0
    )
    second = await bus.append(
        subject, posted("c-conc", "2"), aggregate_version=2, expected_last_subject_seq=first.stream_seq
    )
    with pytest.raises(ConcurrencyConflict):
        await bus.append(
            subject, posted("c-conc", "2 again"), aggregate_version=2, expected_last_subject_seq=first.stream_seq
        )

    assert (first.stream_seq, other.stream_seq, second.stream_seq) == (1, 2, 3)
    assert not first.duplicate
    assert not second.duplicate
    info = await bus.js.stream_info("MSG", subjects_filter=subject)
    assert info.state.subjects == {subject: 2}


async def test_append_without_expectation_always_appends(bus: EventBus) -> None:
    subject = channel_subject("c-free")
    seqs = [
        (
            await bus.append(subject, posted("c-free", str(n)), aggregate_version=n, expected_last_subject_seq=None)
        ).stream_seq
        for n in range(3)
    ]
    assert seqs == [1, 2, 3]


async def test_retried_append_is_a_duplicate_not_a_second_event(bus: EventBus) -> None:
    subject = channel_subject("c-dup")
    event = posted("c-dup", "only once")

    first = await bus.append(subject, event, aggregate_version=1, expected_last_subject_seq=0)
    # The same call retried (e.g. its ack was lost): same event id, same expectation.
    retried = await bus.append(subject, event, aggregate_version=1, expected_last_subject_seq=0)
    unconditional = await bus.append(subject, event, aggregate_version=1, expected_last_subject_seq=None)

    assert not first.duplicate
    assert retried.duplicate
    assert unconditional.duplicate
    assert retried.stream_seq == unconditional.stream_seq == first.stream_seq
    info = await bus.js.stream_info("MSG", subjects_filter=subject)
    assert info.state.subjects == {subject: 1}
    assert info.state.messages == 1


async def test_retry_after_another_write_is_a_conflict(bus: EventBus) -> None:
    """Only the subject's newest message is checked for our own write; later writes mean reload."""
    subject = channel_subject("c-dup")
    event = posted("c-dup", "mine")
    first = await bus.append(subject, event, aggregate_version=1, expected_last_subject_seq=0)
    await bus.append(
        subject, posted("c-dup", "theirs"), aggregate_version=2, expected_last_subject_seq=first.stream_seq
    )

    with pytest.raises(ConcurrencyConflict):
        await bus.append(subject, event, aggregate_version=1, expected_last_subject_seq=0)


async def test_last_subject_seq(bus: EventBus) -> None:
    subject = channel_subject("c-last")
    assert await bus.last_subject_seq("MSG", subject) == 0

    first = await bus.append(subject, posted("c-last", "1"), aggregate_version=1, expected_last_subject_seq=0)
    assert await bus.last_subject_seq("MSG", subject) == first.stream_seq
    await bus.append(
        channel_subject("c-elsewhere"), posted("c-elsewhere", "x"), aggregate_version=1, expected_last_subject_seq=0
    )
    assert await bus.last_subject_seq("MSG", subject) == first.stream_seq

    second = await bus.append(
        subject, posted("c-last", "2"), aggregate_version=2, expected_last_subject_seq=first.stream_seq
    )
    assert await bus.last_subject_seq("MSG", subject) == second.stream_seq == 3


async def test_appended_event_carries_its_envelope_and_headers(bus: EventBus) -> None:
    subject = channel_subject("c-env")
    event = posted("c-env", "hi")
    await bus.append(subject, event, aggregate_version=4, expected_last_subject_seq=0)

    raw = await bus.js.get_last_msg("MSG", subject, direct=True)

    assert raw.data is not None
    envelope = decode(raw.data)
    assert (envelope.event_id, envelope.aggregate_version, envelope.producer) == (event.event_id, 4, "messaging@test")
    assert open_payload(envelope) == event.payload
    assert raw.headers is not None
    assert raw.headers["Nats-Msg-Id"] == event.event_id


async def test_an_appended_event_keeps_the_traceparent_but_never_the_callers_tracestate(bus: EventBus) -> None:
    """A tracestate is text of the client's choosing (well formed or not): the durable log keeps
    none of it, in the envelope or the stream's headers; the trace id goes on."""
    subject = channel_subject("c-trace")
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    with telemetry.continued_from({"traceparent": parent, "tracestate": "evil=AAAA,rt=anything"}, "consume"):
        assert "tracestate" in telemetry.current_trace_headers()  # carried on within the process
        await bus.append(subject, posted("c-trace", "hi"), aggregate_version=1, expected_last_subject_seq=0)

    raw = await bus.js.get_last_msg("MSG", subject, direct=True)

    assert raw.data is not None
    assert raw.headers is not None
    stored = dict(decode(raw.data).trace_context)
    assert set(stored) == {"traceparent"}
    assert stored["traceparent"].split("-")[1] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert "tracestate" not in raw.headers


async def test_a_deliverys_payload_is_opened_once_for_the_owner_check_and_every_handler() -> None:
    event = posted("c-once", "hi")
    delivered = received(event, stream_seq=1)
    assert foreign_type(delivered) is None
    opened = vars(delivered).get("payload")  # what the check opened stays on the delivery
    assert opened == event.payload
    assert delivered.payload is opened


# --- replay -----------------------------------------------------------------------------------


async def test_replay_delivers_history_in_order_then_follows(bus: EventBus) -> None:
    events = [posted(f"c{n % 2}", f"m{n}") for n in range(5)]
    for n, event in enumerate(events):
        await bus.append(channel_subject(f"c{n % 2}"), event, aggregate_version=n, expected_last_subject_seq=None)
    seen = Recorder()

    async def apply(event: ReceivedEvent) -> None:
        await seen.record([event], applied=True)

    replay = await bus.replay(stream="MSG", filter_subject=CHANNELS_FILTER, handler=apply)
    await replay.wait_caught_up(TIMEOUT_S)

    assert [e.stream_seq for e in seen.applied] == [1, 2, 3, 4, 5]
    assert seen.applied_ids() == [e.event_id for e in events]
    assert all(e.stream == "MSG" and e.num_delivered == 1 for e in seen.applied)

    later = posted("c9", "later")
    appended = await bus.append(channel_subject("c9"), later, aggregate_version=1, expected_last_subject_seq=0)
    await replay.wait_for_seq(appended.stream_seq, TIMEOUT_S)

    assert seen.applied_ids()[-1] == later.event_id
    assert replay.last_seq == appended.stream_seq == 6


async def test_an_own_write_is_applied_at_once_and_only_once(bus: EventBus) -> None:
    """Read-your-writes without the round trip: the writer applies its acknowledged append when
    the ack comes, and the replay, when the event reaches it, skips it; others' writes still come
    through the replay, in stream order."""
    seen = Recorder()
    release = asyncio.Event()

    async def apply(event: ReceivedEvent) -> None:
        if event.envelope.aggregate_id == "c0":
            await release.wait()  # the replay stalls on another channel's event
        await seen.record([event], applied=True)

    replay = await bus.replay(stream="MSG", filter_subject=CHANNELS_FILTER, handler=apply)
    await replay.wait_caught_up(TIMEOUT_S)
    elsewhere = await append_unconditionally(bus, posted("c0", "elsewhere"), 1)

    mine = posted("c1", "mine")
    appended = await bus.append(channel_subject("c1"), mine, aggregate_version=1, expected_last_subject_seq=0)
    assert appended.written is not None
    assert appended.written.envelope.event_id == mine.event_id
    assert appended.written.payload is mine.payload  # the message it sealed: not opened again
    assert appended.stream_seq > elsewhere
    await replay.apply_own(appended)
    assert seen.applied_ids() == [mine.event_id]  # at once, while the replay is still held up
    assert seen.applied[0].stream_seq == appended.stream_seq

    release.set()
    await replay.wait_for_seq(appended.stream_seq, TIMEOUT_S)
    assert [e.stream_seq for e in seen.applied] == [appended.stream_seq, elsewhere]  # not applied twice

    theirs = posted("c1", "theirs")  # another instance's write, after ours
    later = await append_unconditionally(bus, theirs, 2)
    await replay.wait_for_seq(later, TIMEOUT_S)
    ids = [mine.event_id, seen.applied_ids()[1], theirs.event_id]
    assert seen.applied_ids() == ids  # ours once, theirs after it through the replay

    # Once the replay has passed it, applying it again changes nothing.
    await replay.apply_own(appended)
    assert seen.applied_ids() == ids

    # A retried append is a duplicate: nothing to apply, the replay's copy stands.
    again = await bus.append(channel_subject("c1"), mine, aggregate_version=1, expected_last_subject_seq=None)
    assert again.duplicate
    assert again.written is None
    await replay.apply_own(again)
    assert seen.applied_ids() == ids


@dataclass
class HeldOpen:
    """The replay as an append's OwnWrites, told of the append and not told it was answered
    until the test says: the delivery then always comes while the append is on its way."""

    replay: Replay
    held: list[bytes] = field(default_factory=list)

    def expect(self, data: bytes, sealed: ReceivedEvent) -> None:
        self.replay.expect(data, sealed)

    def forget(self, data: bytes) -> None:
        self.held.append(data)

    def release(self) -> None:
        for data in self.held:
            self.replay.forget(data)


async def test_an_own_write_delivered_before_its_ack_is_applied_from_the_copy_sealed(bus: EventBus) -> None:
    """The stream usually delivers an append before its acknowledgement comes back: the replay
    applies the writer's open copy then (not decoded again), once, in stream order; a delivery
    of other bytes (another writer's event) is decoded as before."""
    seen = Recorder()

    async def apply(event: ReceivedEvent) -> None:
        await seen.record([event], applied=True)

    replay = await bus.replay(stream="MSG", filter_subject=CHANNELS_FILTER, handler=apply)
    await replay.wait_caught_up(TIMEOUT_S)
    own = HeldOpen(replay)
    mine = posted("c1", "mine")
    appended = await bus.append(channel_subject("c1"), mine, aggregate_version=1, expected_last_subject_seq=0, own=own)
    theirs = posted("c1", "theirs")
    later = await append_unconditionally(bus, theirs, 2)
    await replay.wait_for_seq(later, TIMEOUT_S)
    own.release()

    assert seen.applied_ids() == [mine.event_id, theirs.event_id]
    assert [e.stream_seq for e in seen.applied] == [appended.stream_seq, later]
    assert seen.applied[0].payload is mine.payload  # the message it sealed, not a decoded copy
    assert seen.applied[1].payload is not theirs.payload
    assert seen.applied[1].payload == theirs.payload

    await replay.apply_own(appended)  # the acknowledgement, handled after the delivery: nothing more
    assert seen.applied_ids() == [mine.event_id, theirs.event_id]


async def test_replay_asks_the_consumer_when_no_event_says_it_caught_up(bus: EventBus) -> None:
    """An erasure can delete the last event before it is delivered; then only the consumer's
    state tells that nothing is pending. Shown by forgetting the flag the last event set."""
    release, applying_third = asyncio.Event(), asyncio.Event()

    async def apply(event: ReceivedEvent) -> None:
        if event.stream_seq == 3:
            applying_third.set()
            await release.wait()

    for n in range(2):
        await bus.append(
            channel_subject("c0"), posted("c0", f"m{n}"), aggregate_version=n, expected_last_subject_seq=None
        )
    replay = await bus.replay(stream="MSG", filter_subject=CHANNELS_FILTER, handler=apply)
    await replay.wait_caught_up(TIMEOUT_S)

    replay.caught_up.clear()
    await replay.wait_caught_up(TIMEOUT_S)  # only the consumer's state can set it now
    assert replay.caught_up.is_set()

    await bus.append(channel_subject("c0"), posted("c0", "held"), aggregate_version=2, expected_last_subject_seq=None)
    await asyncio.wait_for(applying_third.wait(), TIMEOUT_S)
    replay.caught_up.clear()
    with pytest.raises(TimeoutError):
        await replay.wait_caught_up(2.0)  # event 3 is still being applied: not caught up
    release.set()
    await replay.wait_for_seq(3, TIMEOUT_S)


async def test_a_replay_that_keeps_applying_is_not_timed_out_however_long_it_takes(bus: EventBus) -> None:
    """The timeout bounds a stall, not the replay: eight events, each applied half a second
    after the one before (a long stream on a loaded host), take longer than the 3 s given, and
    the wait still ends caught up. (Time passing is what is tested here, hence the pauses.)"""
    release = asyncio.Semaphore(0)

    async def apply(event: ReceivedEvent) -> None:
        await release.acquire()

    for n in range(8):
        await bus.append(
            channel_subject("c0"), posted("c0", f"m{n}"), aggregate_version=n, expected_last_subject_seq=None
        )
    replay = await bus.replay(stream="MSG", filter_subject=CHANNELS_FILTER, handler=apply)
    waiting = asyncio.create_task(replay.wait_caught_up(3.0))
    started = asyncio.get_running_loop().time()
    for _ in range(8):
        await asyncio.sleep(0.5)
        release.release()
    await asyncio.wait_for(waiting, TIMEOUT_S)
    assert replay.last_seq == 8
    assert asyncio.get_running_loop().time() - started > 3.0  # longer than the timeout, as meant


async def test_replay_of_an_empty_stream_is_caught_up_at_once(bus: EventBus) -> None:
    async def apply(event: ReceivedEvent) -> None:
        raise AssertionError("nothing to apply")

    replay = await bus.replay(stream="MSG", filter_subject=CHANNELS_FILTER, handler=apply)
    await replay.wait_caught_up(TIMEOUT_S)
    assert replay.last_seq == 0


async def test_replay_only_new_and_from_a_sequence(bus: EventBus) -> None:
    for n in range(3):
        await bus.append(
            channel_subject("c1"), posted("c1", f"old{n}"), aggregate_version=n, expected_last_subject_seq=None
        )
    new_only = Recorder()
    from_two = Recorder()

    async def apply_new(event: ReceivedEvent) -> None:
        await new_only.record([event], applied=True)

    async def apply_from_two(event: ReceivedEvent) -> None:
        await from_two.record([event], applied=True)

    live = await bus.replay(stream="MSG", filter_subject=CHANNELS_FILTER, handler=apply_new, only_new=True)
    tail = await bus.replay(stream="MSG", filter_subject=CHANNELS_FILTER, handler=apply_from_two, start_seq=2)
    appended = await bus.append(
        channel_subject("c1"), posted("c1", "new"), aggregate_version=3, expected_last_subject_seq=None
    )
    await live.wait_for_seq(appended.stream_seq, TIMEOUT_S)
    await tail.wait_for_seq(appended.stream_seq, TIMEOUT_S)

    assert [e.stream_seq for e in new_only.applied] == [4]
    assert [e.stream_seq for e in from_two.applied] == [2, 3, 4]


# --- durable consumers ------------------------------------------------------------------------


async def _consumer_settled(storage_bus: EventBus, last_seq: int) -> api.ConsumerInfo | None:
    """Consumer info once everything up to `last_seq` is delivered and nothing awaits an ack."""
    info = await storage_bus.js.consumer_info("MSG", DURABLE)
    delivered = info.delivered.stream_seq if info.delivered else 0
    if info.num_ack_pending == 0 and info.num_pending == 0 and delivered >= last_seq:
        return info
    return None


async def _parked_message(platform_js: nats.js.JetStreamContext, subject: str) -> api.RawStreamMsg | None:
    try:
        return await platform_js.get_last_msg("PARKED", subject)
    except nats.js.errors.NotFoundError:
        return None


async def _archived_failing_on_the_middle_one(
    bus: EventBus, storage_bus: EventBus, *, text: str, failing_deliveries: int, error: Exception
) -> tuple[list[NewEvent], list[int], Recorder]:
    """Three events, storage archiving them with up to 3 deliveries; a batch holding the middle
    one (`text`) raises `error` on its first `failing_deliveries` deliveries."""
    events = [posted("c1", "a"), posted("c1", text), posted("c2", "b")]
    seqs = [await append_unconditionally(bus, e, n) for n, e in enumerate(events)]
    middle = events[1].event_id
    seen = Recorder()

    async def archive(batch: Sequence[ReceivedEvent]) -> None:
        # All or nothing, as one database transaction would be.
        if any(e.envelope.event_id == middle and e.num_delivered <= failing_deliveries for e in batch):
            await seen.record(batch, applied=False)
            raise error
        await seen.record(batch, applied=True)

    await storage_bus.consume(consumer_spec(max_deliver=3), archive)
    return events, seqs, seen


async def test_poison_event_is_parked_and_the_rest_of_its_batch_acked(
    nats_server: NatsTestServer, bus: EventBus, storage_bus: EventBus
) -> None:
    events, seqs, seen = await _archived_failing_on_the_middle_one(
        bus, storage_bus, text="poison", failing_deliveries=3, error=RuntimeError("cannot archive this one")
    )
    poison = events[1].event_id
    platform = (await nats_server.connect("platform")).jetstream()
    subject = parked_subject("storage", "MSG")

    parked = await eventually(lambda: _parked_message(platform, subject))
    info = await eventually(lambda: _consumer_settled(storage_bus, seqs[-1]))

    assert subject == "parley.parked.storage.MSG"
    assert parked.data is not None
    assert decode(parked.data).event_id == poison
    assert parked.headers is not None
    assert parked.headers["Parley-Original-Sequence"] == str(seqs[1])
    assert parked.headers["Parley-Original-Subject"] == channel_subject("c1")
    assert parked.headers["Parley-Original-Stream"] == "MSG"
    assert parked.headers["Parley-Consumer"] == DURABLE
    assert "cannot archive this one" in parked.headers["Parley-Parked-Reason"]
    # The handler saw the poison event on every allowed delivery, and never after parking.
    poison_deliveries = sorted(
        {e.num_delivered for batch in seen.calls for e in batch if e.envelope.event_id == poison}
    )
    assert poison_deliveries == [1, 2, 3]
    assert sorted(seen.applied_ids()) == sorted([events[0].event_id, events[2].event_id])
    assert info.num_ack_pending == 0
    assert info.num_pending == 0
    parked_info = await platform.stream_info("PARKED")
    assert parked_info.state.messages == 1


async def test_event_failing_once_is_redelivered_and_applied_once(
    nats_server: NatsTestServer, bus: EventBus, storage_bus: EventBus
) -> None:
    # A transient failure: the first delivery of this event fails, the next one works.
    events, seqs, seen = await _archived_failing_on_the_middle_one(
        bus, storage_bus, text="flaky", failing_deliveries=1, error=ConnectionError("database briefly unavailable")
    )
    flaky = events[1].event_id
    await seen.wait_until(lambda: flaky in seen.applied_ids())
    await eventually(lambda: _consumer_settled(storage_bus, seqs[-1]))

    assert sorted(seen.applied_ids()) == sorted(e.event_id for e in events)
    [flaky_applied] = [e for e in seen.applied if e.envelope.event_id == flaky]
    assert flaky_applied.num_delivered == 2
    assert flaky_applied.stream_seq == seqs[1]
    platform = (await nats_server.connect("platform")).jetstream()
    assert await _parked_message(platform, parked_subject("storage", "MSG")) is None


async def test_stop_consumers_lets_the_in_flight_batch_finish(bus: EventBus, storage_bus: EventBus) -> None:
    event = posted("c1", "in flight")
    appended = await bus.append(channel_subject("c1"), event, aggregate_version=1, expected_last_subject_seq=0)
    started = asyncio.Event()
    release = asyncio.Event()
    seen = Recorder()

    async def archive(batch: Sequence[ReceivedEvent]) -> None:
        started.set()
        await release.wait()
        await seen.record(batch, applied=True)

    await storage_bus.consume(consumer_spec(), archive)
    await asyncio.wait_for(started.wait(), TIMEOUT_S)

    stopping = asyncio.create_task(storage_bus.stop_consumers())
    # A negative check, so bounded by time: stop must not return while the batch is in flight.
    done, _ = await asyncio.wait({stopping}, timeout=0.3)
    assert not done
    release.set()
    await asyncio.wait_for(stopping, TIMEOUT_S)

    assert seen.applied_ids() == [event.event_id]
    await storage_bus.nc.flush()
    await eventually(lambda: _consumer_settled(storage_bus, appended.stream_seq))
    assert len(seen.calls) == 1


async def test_a_lingering_consumer_hands_events_of_a_trickle_over_as_one_batch(
    bus: EventBus, storage_bus: EventBus
) -> None:
    """A group commit: the events arriving within the linger after a batch's first one join it,
    instead of each fetch (which answers as soon as one event is there) making its own batch."""
    seen = Recorder()

    async def archive(batch: Sequence[ReceivedEvent]) -> None:
        await seen.record(batch, applied=True)

    # A linger far longer than the test: the batch goes when it is full, not when time is up.
    await storage_bus.consume(consumer_spec(), archive, batch=5, linger_s=60.0)
    first = await append_unconditionally(bus, posted("c1", "first"), 1)

    async def first_fetched() -> bool | None:
        info = await storage_bus.js.consumer_info("MSG", DURABLE)
        delivered = info.delivered.stream_seq if info.delivered else 0
        return True if seen.calls or delivered >= first else None

    await eventually(first_fetched, what="the first event fetched")
    for n in range(2, 6):
        await append_unconditionally(bus, posted("c1", f"then {n}"), n)
    await seen.wait_until(lambda: len(seen.applied) == 5)

    assert [len(batch) for batch in seen.calls] == [5]


async def test_a_pull_hands_over_every_waiting_event_in_one_answer(bus: EventBus, storage_bus: EventBus) -> None:
    """A durable consumer's pull request (bus_pull): the events there come in one answer, in
    order; with none there it answers at once, or with a wait, at the first event to arrive."""
    seqs = [await append_unconditionally(bus, posted("c1", f"m{n}"), n) for n in range(5)]
    await storage_bus.js.add_consumer("MSG", durable_config(consumer_spec()))
    pulls = Pulls(storage_bus, stream="MSG", durable=DURABLE)
    await pulls.start()
    try:
        assert [m.metadata.sequence.stream for m in await pulls.pull(3, wait_s=None)] == seqs[:3]
        assert [m.metadata.sequence.stream for m in await pulls.pull(10, wait_s=None)] == seqs[3:]
        assert await pulls.pull(10, wait_s=None) == []

        waiting = asyncio.create_task(pulls.pull(10, wait_s=TIMEOUT_S))
        later = await append_unconditionally(bus, posted("c2", "later"), 1)
        assert [m.metadata.sequence.stream for m in await waiting] == [later]
    finally:
        await pulls.stop()


async def test_a_pull_from_a_durable_that_is_not_there_is_refused(storage_bus: EventBus) -> None:
    """No consumer answers (deleted, or lost with the server's state): an error, which the durable
    consumer takes as the sign to look for its consumer and make it again."""
    await storage_bus.wait_for_stream("MSG")
    pulls = Pulls(storage_bus, stream="MSG", durable=DURABLE)
    await pulls.start()
    try:
        with pytest.raises(nats.js.errors.APIError):
            await pulls.pull(10, wait_s=None)
    finally:
        await pulls.stop()


async def test_consumer_outlives_a_failure_to_park(nats_server: NatsTestServer) -> None:
    """Parking needs the PARKED stream; while it is missing the consumer must keep consuming."""
    messaging = EventBus(await nats_server.connect("messaging"), service="messaging", producer="messaging@test")
    await messaging.ensure_streams([MSG])  # no PARKED stream: parking fails
    storage = EventBus(await nats_server.connect("storage"), service="storage", producer="storage@test")
    poison = posted("c1", "poison")
    await messaging.append(channel_subject("c1"), poison, aggregate_version=1, expected_last_subject_seq=0)
    seen = Recorder()

    async def archive(batch: Sequence[ReceivedEvent]) -> None:
        if any(e.envelope.event_id == poison.event_id for e in batch):
            await seen.record(batch, applied=False)
            raise RuntimeError("cannot archive this one")
        await seen.record(batch, applied=True)

    try:
        await storage.consume(consumer_spec(max_deliver=1), archive)
        await seen.wait_until(lambda: len(seen.calls) >= 1)
        healthy = posted("c2", "fine")
        await messaging.append(channel_subject("c2"), healthy, aggregate_version=1, expected_last_subject_seq=0)

        await seen.wait_until(lambda: healthy.event_id in seen.applied_ids())
    finally:
        await asyncio.wait_for(storage.stop_consumers(), TIMEOUT_S)


async def test_an_unavailable_handler_holds_the_batch_and_parks_nothing(
    nats_server: NatsTestServer, bus: EventBus, storage_bus: EventBus
) -> None:
    """A database outage longer than the redelivery budget: events wait, none is parked."""
    events = [posted("c1", "a"), posted("c2", "b")]
    seqs = [await append_unconditionally(bus, e, n) for n, e in enumerate(events)]
    seen = Recorder()
    outage_left = 5  # more refusals than max_deliver (3) allows deliveries

    async def archive(batch: Sequence[ReceivedEvent]) -> None:
        nonlocal outage_left
        if outage_left > 0:
            outage_left -= 1
            await seen.record(batch, applied=False)
            raise RetryLater("database unavailable")
        await seen.record(batch, applied=True)

    await storage_bus.consume(consumer_spec(max_deliver=3), archive)
    await seen.wait_until(lambda: len(seen.applied_ids()) == len(events))
    await eventually(lambda: _consumer_settled(storage_bus, seqs[-1]))

    assert outage_left == 0
    assert sorted(seen.applied_ids()) == sorted(e.event_id for e in events)
    # Held in place: JetStream delivered each event once, however long the outage lasted.
    assert {e.num_delivered for e in seen.applied} == {1}
    platform = (await nats_server.connect("platform")).jetstream()
    assert await _parked_message(platform, parked_subject("storage", "MSG")) is None


async def test_a_refused_event_is_parked_at_once(
    nats_server: NatsTestServer, bus: EventBus, storage_bus: EventBus
) -> None:
    events = [posted("c1", "fine"), posted("c1", "against the rules")]
    seqs = [await append_unconditionally(bus, e, n) for n, e in enumerate(events)]
    seen = Recorder()

    async def handle(batch: Sequence[ReceivedEvent]) -> None:
        if any(e.envelope.event_id == events[1].event_id for e in batch):
            await seen.record(batch, applied=False)
            raise Refused("not the erased user's message")
        await seen.record(batch, applied=True)

    passed: list[int] = []

    async def on_parked(seq: int) -> None:
        passed.append(seq)

    await storage_bus.consume(consumer_spec(max_deliver=5), handle, on_parked=on_parked)
    platform = (await nats_server.connect("platform")).jetstream()
    parked = await eventually(lambda: _parked_message(platform, parked_subject("storage", "MSG")))
    await eventually(lambda: _consumer_settled(storage_bus, seqs[-1]))
    await until(lambda: passed == [seqs[1]], "the consumer telling of the parked event")

    assert parked.headers is not None
    assert parked.headers["Parley-Parked-Reason"] == "refused: not the erased user's message"
    # Once alone (after its batch failed), then parked: no redelivery budget spent on it.
    assert sorted(e.num_delivered for batch in seen.calls for e in batch if e.stream_seq == seqs[1]) == [1, 1]
    assert seen.applied_ids() == [events[0].event_id]


# --- only what the owner writes ---------------------------------------------------------------


def _foreign(event_id: str) -> bytes:
    """An auth event (a registration with a password hash) on messaging's stream."""
    event = NewEvent(
        aggregate_type="channel",
        aggregate_id="c1",
        payload=UserRegistered(user_id="intruder", username="intruder", password_hash="$argon2id$forged"),
        actor="intruder",
        event_id=event_id,
    )
    return seal(event, aggregate_version=2, producer="forger@0", trace_context={}).SerializeToString()


async def _foreign_copies(platform: nats.js.JetStreamContext) -> list[api.RawStreamMsg]:
    info = await platform.stream_info("PARKED")
    found = []
    for seq in range(int(info.state.first_seq or 1), int(info.state.last_seq or 0) + 1):
        msg = await platform.get_msg("PARKED", seq)
        if (msg.headers or {}).get("Parley-Parked-Kind") == FOREIGN_EVENT:
            found.append(msg)
    return found


async def test_an_event_its_streams_owner_never_writes_is_parked_once_and_never_handled(
    nats_server: NatsTestServer, bus: EventBus, storage_bus: EventBus
) -> None:
    before = await append_unconditionally(bus, posted("c1", "before"), 1)
    platform = (await nats_server.connect("platform")).jetstream()
    forged = (await platform.publish(channel_subject("c1"), _foreign("forged-1"))).seq
    after = await append_unconditionally(bus, posted("c1", "after"), 3)
    # One recorder per replay: two replays run at once, so their calls interleave.
    projected = [Recorder() for _ in range(3)]
    archived = Recorder()

    def project_into(recorder: Recorder) -> Callable[[ReceivedEvent], Awaitable[None]]:
        async def project(event: ReceivedEvent) -> None:
            await recorder.record([event], applied=True)

        return project

    async def archive(batch: Sequence[ReceivedEvent]) -> None:
        await archived.record(batch, applied=True)

    passed: list[int] = []

    async def on_parked(seq: int) -> None:
        passed.append(seq)

    # Two replays of one service (its projection and a live feed, say), then the same after a restart.
    replays = [
        await bus.replay(stream="MSG", filter_subject=CHANNELS_FILTER, handler=project_into(recorder))
        for recorder in projected[:2]
    ]
    await storage_bus.consume(consumer_spec(), archive, on_parked=on_parked)
    for replay in replays:
        await replay.wait_for_seq(after, TIMEOUT_S)
        await replay.stop()
    await eventually(lambda: _consumer_settled(storage_bus, after))
    again = await bus.replay(stream="MSG", filter_subject=CHANNELS_FILTER, handler=project_into(projected[2]))
    await again.wait_for_seq(after, TIMEOUT_S)

    for recorder in projected:
        assert [e.stream_seq for e in recorder.applied] == [before, after]
    assert [e.stream_seq for e in archived.applied] == [before, after]
    await until(lambda: passed == [forged], "the consumer telling of the event it parked, never handled")
    copies = await eventually(lambda: _n_copies(platform, 2))
    assert sorted(m.subject for m in copies) == [
        f"{parked_subject('messaging', 'MSG')}.{forged}",
        f"{parked_subject('storage', 'MSG')}.{forged}",
    ]
    for copy in copies:
        assert copy.headers is not None
        assert copy.headers["Parley-Original-Sequence"] == str(forged)
        assert "foreign event type 'parley.auth.v1.UserRegistered'" in copy.headers["Parley-Parked-Reason"]
        assert decode(copy.data or b"").event_id == "forged-1"
    assert bus.halted is None  # parked and passed: no projection halted on it


async def _n_copies(platform: nats.js.JetStreamContext, n: int) -> list[api.RawStreamMsg] | None:
    copies = await _foreign_copies(platform)
    return copies if len(copies) == n else None


# --- a consumer's stream and its loss ---------------------------------------------------------


async def test_a_consumer_of_a_stream_not_created_yet_starts_once_it_is(nats_server: NatsTestServer) -> None:
    storage = EventBus(await nats_server.connect("storage"), service="storage", producer="storage@test")
    seen = Recorder()

    async def archive(batch: Sequence[ReceivedEvent]) -> None:
        await seen.record(batch, applied=True)

    try:
        consumer = await storage.consume(consumer_spec(), archive)  # returns at once: MSG does not exist
        assert await consumer.wait_drained(TIMEOUT_S)  # nothing can be waiting on a stream that is not there
        messaging = EventBus(await nats_server.connect("messaging"), service="messaging", producer="messaging@test")
        await messaging.ensure_streams([MSG, PARKED])
        event = posted("c1", "first")
        await append_unconditionally(messaging, event, 1)
        await seen.wait_until(lambda: seen.applied_ids() == [event.event_id])
    finally:
        await asyncio.wait_for(storage.stop_consumers(), TIMEOUT_S)


@dataclass
class ResumeAt:
    """A service's answer to a lost consumer: start at `seq`; and what it was told afterwards."""

    seq: int
    made_again: list[tuple[str, int]] = field(default_factory=list)

    async def resume_from(self, spec: ConsumerSpec) -> int:
        return self.seq

    async def recreated(self, spec: ConsumerSpec, start_seq: int) -> None:
        self.made_again.append((spec.durable, start_seq))


async def test_a_lost_durable_is_made_again_where_its_service_says(
    nats_server: NatsTestServer, bus: EventBus, storage_bus: EventBus
) -> None:
    first = [posted("c1", f"m{n}") for n in range(3)]
    seqs = [await append_unconditionally(bus, e, n) for n, e in enumerate(first)]
    seen = Recorder()

    async def archive(batch: Sequence[ReceivedEvent]) -> None:
        await seen.record(batch, applied=True)

    on_loss = ResumeAt(seq=seqs[1])  # the service recorded seqs[0] only, say
    consumer = await storage_bus.consume(consumer_spec(), archive, on_loss=on_loss)
    await seen.wait_until(lambda: len(seen.applied) == 3)
    await consumer.wait_drained(TIMEOUT_S)
    platform = (await nats_server.connect("platform")).jetstream()
    assert await platform.delete_consumer("MSG", DURABLE)  # an operator's mistake, or a lost server state
    later = posted("c2", "while it was gone")
    await append_unconditionally(bus, later, 9)

    await seen.wait_until(lambda: later.event_id in seen.applied_ids())
    assert on_loss.made_again == [(DURABLE, seqs[1])]
    # From where the service said: seqs[1] again (a repeat its archive drops), never before it.
    assert [e.stream_seq for e in seen.applied] == [*seqs, seqs[1], seqs[2], seqs[2] + 1]
    info = await platform.consumer_info("MSG", DURABLE)
    assert info.config.opt_start_seq == seqs[1]


async def test_a_replay_whose_consumer_is_lost_makes_a_new_one_and_misses_nothing(
    nats_server: NatsTestServer, bus: EventBus
) -> None:
    """nats-py recreates an ordered consumer after missed heartbeats with the same settings; the
    name must be new each time, or the server refuses the creation and the replay stops."""
    gateway = EventBus(await nats_server.connect("gateway"), service="gateway", producer="gateway@test")
    seen = Recorder()

    async def apply(event: ReceivedEvent) -> None:
        await seen.record([event], applied=True)

    first = await append_unconditionally(bus, posted("c1", "first"), 1)
    replay = await gateway.replay(stream="MSG", filter_subject=CHANNELS_FILTER, handler=apply, heartbeat_s=0.5)
    await replay.wait_for_seq(first, TIMEOUT_S)
    platform = (await nats_server.connect("platform")).jetstream()
    [name] = [c.name for c in await platform.consumers_info("MSG")]
    assert name.startswith("gateway_")
    assert await platform.delete_consumer("MSG", name)
    later = await append_unconditionally(bus, posted("c1", "after the loss"), 2)

    await replay.wait_for_seq(later, TIMEOUT_S)
    assert [e.stream_seq for e in seen.applied] == [first, later]
    [renamed] = [c.name for c in await platform.consumers_info("MSG")]
    assert renamed.startswith("gateway_")
    assert renamed != name
    await replay.stop()


# --- appends across a broker outage -------------------------------------------------------------


async def subject_count(bus: EventBus, subject: str) -> int:
    info = await bus.js.stream_info("MSG", subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


async def test_an_append_while_the_broker_is_down_is_not_made_and_never_lands_later(
    nats_server: NatsTestServer, bus: EventBus
) -> None:
    """Nothing goes into nats-py's reconnect buffer, which would land it after the caller was told it failed."""
    subject = channel_subject("c-down")
    nats_server.process.kill()
    await until(lambda: not bus.nc.is_connected, what="the client to notice the broker is gone")

    with answering_within(1.0), pytest.raises(AppendNotMade, match="nothing was stored"):
        await bus.append(subject, posted("c-down", "refused"), aggregate_version=1, expected_last_subject_seq=0)

    await nats_server.process.restart()
    await until(lambda: bus.nc.is_connected, what="the client to reconnect")
    await bus.nc.flush()
    await bus.wait_for_stream("MSG")
    assert await subject_count(bus, subject) == 0


async def test_an_append_waits_for_the_broker_within_its_deadline_and_lands_once(
    nats_server: NatsTestServer, bus: EventBus
) -> None:
    subject = channel_subject("c-back")
    event = posted("c-back", "waits")
    nats_server.process.kill()
    await until(lambda: not bus.nc.is_connected, what="the client to notice the broker is gone")

    async def append() -> Appended:
        with answering_within(30.0):
            return await bus.append(subject, event, aggregate_version=1, expected_last_subject_seq=0)

    pending = asyncio.create_task(append())
    await nats_server.process.restart()
    appended = await asyncio.wait_for(pending, TIMEOUT_S * 3)

    assert not appended.duplicate
    assert await subject_count(bus, subject) == 1


async def test_a_publish_without_an_answer_is_named_unknown_and_a_retry_makes_it_once(
    nats_server: NatsTestServer, bus: EventBus
) -> None:
    """A frozen broker takes the publish but does not answer: the caller hears that the outcome
    is unknown (never a plain failure), and the retry with the same event id settles it."""
    subject = channel_subject("c-frozen")
    event = posted("c-frozen", "maybe")
    async with nats_server.frozen():
        with answering_within(1.0), pytest.raises(AppendOutcomeUnknown) as raised:
            await bus.append(subject, event, aggregate_version=1, expected_last_subject_seq=0)
    assert isinstance(raised.value, OutcomeUnknown)
    assert "same idempotency key" in str(raised.value)

    again = await bus.append(subject, event, aggregate_version=1, expected_last_subject_seq=0)

    assert again.duplicate  # the frozen broker stored the first one once it ran again
    assert await subject_count(bus, subject) == 1


async def test_a_flood_of_parked_copies_stops_at_parkeds_bounds_and_keeps_the_security_records(
    nats_server: NatsTestServer,
) -> None:
    """Every service's user may park on its own subtree, so a stolen one (the gateway's) could
    fill the JetStream store all streams share. PARKED is bounded as the platform's settings say
    (PARLEY_PARKED_MAX_MSGS here), refuses what comes once full, and keeps what it holds: the
    security record parked before the flood is still there, and the flood is cut at the bound."""
    limit = 40
    settings = Settings(parked_max_msgs=limit)
    platform = EventBus(await nats_server.connect("platform"), service="platform", producer="test@0")
    await platform.ensure_streams(settings.streams)
    storage = (await nats_server.connect("storage")).jetstream()
    finding = f"{parked_subject('storage', 'AUTH')}.7"
    await storage.publish(
        finding, b"forged", headers={"Parley-Parked-Kind": FOREIGN_EVENT, "Parley-Original-Stream": "AUTH"}
    )
    gateway = (await nats_server.connect("gateway")).jetstream()  # the stolen credential
    refused = 0
    for n in range(limit * 3):
        try:
            await gateway.publish(f"{parked_subject('gateway', 'MSG')}.{n}", b"junk" * 100)
        except nats.js.errors.APIError:
            refused += 1

    info = await platform.js.stream_info("PARKED")
    assert info.state.messages == limit
    assert refused == limit * 3 - (limit - 1)
    kept = await platform.js.get_msg("PARKED", 1)
    assert kept.subject == finding
    assert kept.headers is not None
    assert kept.headers["Parley-Parked-Kind"] == FOREIGN_EVENT
    # The default declaration is bounded too (a service creating PARKED where none exists).
    assert PARKED.max_bytes == PARKED_MAX_BYTES > 0
    assert PARKED.max_msgs == PARKED_MAX_MSGS > 0
    assert info.config.max_bytes == PARKED_MAX_BYTES
    assert info.config.discard == api.DiscardPolicy.NEW


async def test_a_replay_passes_junk_at_the_streams_end_and_catches_up(bus: EventBus) -> None:
    """Bytes that are no event envelope (written with a stolen owner's credential) at the end of a
    stream: a reader's replay parks and passes them, so a service restarting then still starts."""
    appended = await bus.append(
        channel_subject("j1"), posted("j1", "real"), aggregate_version=1, expected_last_subject_seq=0
    )
    for n in range(3):
        await bus.js.publish(channel_subject("j1"), f"junk {n}".encode())
    seen = Recorder()

    async def apply(event: ReceivedEvent) -> None:
        await seen.record([event], applied=True)

    replay = await bus.replay(stream="MSG", filter_subject=CHANNELS_FILTER, handler=apply)
    await replay.wait_caught_up(TIMEOUT_S)

    assert [e.stream_seq for e in seen.applied] == [appended.stream_seq]
    assert replay.last_seq == appended.stream_seq + 3
    assert bus.halted is None
