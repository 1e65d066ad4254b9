"""The one way a service writes its stream (parley_core.event_log), against a real nats-server:
two instances of a writer, each with its own replay, deciding on the same aggregates.

The aggregate here is a tally on a channel subject: each decision appends the next number, so
a lost race that was not decided again shows as a number taken twice or a version skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import pytest_asyncio
from parley.messaging.v1.events_pb2 import MessagePosted

from parley_core.actor import Actor
from parley_core.bus import Appended, ConcurrencyConflict, EventBus, ReceivedEvent, Replay
from parley_core.envelope import NewEvent, open_payload
from parley_core.errors import FailedPrecondition, PermissionDenied, Unavailable
from parley_core.event_log import ANYWHERE, NEW, ChangedMeanwhile, EventLog, Position, Turn, position_of
from parley_core.topology import CHANNELS_FILTER, STREAMS_BY_NAME, channel_subject
from parley_testing.nats import NatsTestServer

MSG = STREAMS_BY_NAME["MSG"]
SUBJECT = channel_subject("tally")


@dataclass
class Tally:
    version: int = 0
    last_stream_seq: int = 0
    numbers: list[int] = field(default_factory=list)


@dataclass
class Instance:
    """One writer: its bus, its replay of the stream into its tallies, and its event log."""

    bus: EventBus
    replay: Replay
    log: EventLog
    tallies: dict[str, Tally]

    def read(self, subject: str = SUBJECT) -> Tally | None:
        return self.tallies.get(subject)


def counted(number: int) -> NewEvent:
    payload = MessagePosted(channel_id="tally", body=str(number), sender_id="u1")
    return NewEvent(aggregate_type="channel", aggregate_id="tally", payload=payload, actor=Actor.user("u1"))


def next_number(tally: Tally | None) -> tuple[list[NewEvent], int]:
    """The pure decision: append the number after the tally's last one, and answer with it."""
    number = (tally.numbers[-1] if tally and tally.numbers else 0) + 1
    return [counted(number)], number


async def start_instance(nats_server: NatsTestServer, name: str, *, attempts: int = 5) -> Instance:
    bus = EventBus(await nats_server.connect("messaging"), service="messaging", producer=f"messaging@{name}")
    await bus.ensure_streams([MSG])
    tallies: dict[str, Tally] = {}

    async def apply(event: ReceivedEvent) -> None:
        tally = tallies.setdefault(event.subject, Tally())
        payload = open_payload(event.envelope)
        assert isinstance(payload, MessagePosted)
        tally.numbers.append(int(payload.body))
        tally.version = event.envelope.aggregate_version
        tally.last_stream_seq = event.stream_seq

    replay = await bus.replay(stream="MSG", filter_subject=CHANNELS_FILTER, handler=apply)
    await replay.wait_caught_up()
    return Instance(bus, replay, EventLog(bus, replay, attempts=attempts), tallies)


@pytest_asyncio.fixture
async def instances(nats_server: NatsTestServer) -> AsyncIterator[tuple[Instance, Instance]]:
    first, second = await start_instance(nats_server, "a"), await start_instance(nats_server, "b")
    try:
        yield first, second
    finally:
        for instance in (first, second):
            await instance.bus.stop_consumers()


async def test_a_decision_is_appended_and_read_back_before_the_call_returns(
    instances: tuple[Instance, Instance],
) -> None:
    one, _ = instances
    after, number = await one.log.decide_and_append(SUBJECT, one.read, next_number)

    assert number == 1
    assert after is not None
    assert after.numbers == [1]
    assert after.version == 1  # the aggregate's version is carried by the envelope
    last = await one.bus.last_subject_seq("MSG", SUBJECT)
    assert after.last_stream_seq == last  # this instance's projection holds its own write already


async def test_a_decision_without_events_appends_nothing_and_still_answers(
    instances: tuple[Instance, Instance],
) -> None:
    one, _ = instances
    await one.log.decide_and_append(SUBJECT, one.read, next_number)
    before = await one.bus.last_subject_seq("MSG", SUBJECT)

    after, answer = await one.log.decide_and_append(SUBJECT, one.read, lambda tally: ([], "unchanged"))

    assert answer == "unchanged"
    assert after is not None
    assert after.numbers == [1]
    assert await one.bus.last_subject_seq("MSG", SUBJECT) == before


async def test_a_refused_decision_writes_nothing(instances: tuple[Instance, Instance]) -> None:
    one, _ = instances

    def refuse(tally: Tally | None) -> tuple[list[NewEvent], None]:
        raise PermissionDenied("not yours")

    with pytest.raises(PermissionDenied):
        await one.log.decide_and_append(SUBJECT, one.read, refuse)
    assert await one.bus.last_subject_seq("MSG", SUBJECT) == 0


async def test_two_instances_racing_on_one_aggregate_each_land_once(instances: tuple[Instance, Instance]) -> None:
    """Optimistic concurrency between instances: whichever loses a race catches up and decides
    again, so every command lands exactly once and no number is taken twice."""
    one, two = instances
    each = 15
    # A command loses a race only to one of the other instance's commands landing (its own are
    # one at a time), so one more attempt than the other has commands always lands it.
    writers = [(EventLog(i.bus, i.replay, attempts=each + 1), i.read) for i in (one, two)]
    calls = [log.decide_and_append(SUBJECT, read, next_number) for _ in range(each) for log, read in writers]

    answers = [number for _, number in await asyncio.gather(*calls)]

    assert sorted(answers) == list(range(1, 31))
    await one.log.settle(SUBJECT)
    await two.log.settle(SUBJECT)
    for instance in (one, two):
        tally = instance.read()
        assert tally is not None
        assert tally.numbers == list(range(1, 31))
        assert tally.version == 30


@pytest.mark.parametrize("pipelined", [False, True], ids=["one-at-a-time", "pipelined"])
async def test_two_instances_deciding_in_turns_at_once_each_command_lands_once(
    instances: tuple[Instance, Instance], pipelined: bool
) -> None:
    """Optimistic concurrency holds per command of a turn, pipelined or not: a command that lost
    a race to the other instance is decided again on the aggregate as it now is."""
    one, two = instances
    each, turns_each = 5, 3
    writers = [(EventLog(i.bus, i.replay, attempts=each * turns_each + 1), i.read) for i in (one, two)]
    ahead = tally_ahead if pipelined else None
    calls = [
        log.decide_and_append_each(SUBJECT, read, [Turn(next_number)] * each, ahead=ahead)
        for _ in range(turns_each)
        for log, read in writers
    ]

    answers = [o[1] for outcomes in await asyncio.gather(*calls) for o in outcomes if isinstance(o, tuple)]

    total = 2 * each * turns_each
    assert sorted(answers) == list(range(1, total + 1))
    await one.log.settle(SUBJECT)
    await two.log.settle(SUBJECT)
    for instance in (one, two):
        tally = instance.read()
        assert tally is not None
        assert (tally.numbers, tally.version) == (list(range(1, total + 1)), total)


def stale_first(instance: Instance, stale: Tally, *, always: bool = False) -> Callable[[], Tally | None]:
    """A read that returns the aggregate as it was before another instance's write (the first
    time, or every time): the append at its position loses the race, deterministically."""
    reads: list[int] = []

    def read() -> Tally | None:
        reads.append(1)
        return stale if always or len(reads) == 1 else instance.read()

    return read


async def overtaken(one: Instance, two: Instance) -> Tally:
    """The tally as `one` wrote it (number 1), after which `two` wrote number 2."""
    await one.log.decide_and_append(SUBJECT, one.read, next_number)
    tally = one.read()
    assert tally is not None
    stale = replace(tally, numbers=list(tally.numbers))
    await two.log.settle(SUBJECT)
    await two.log.decide_and_append(SUBJECT, two.read, next_number)
    return stale


async def test_a_lost_race_is_decided_again_on_the_aggregate_as_it_now_is(
    instances: tuple[Instance, Instance],
) -> None:
    one, two = instances
    stale = await overtaken(one, two)
    decided_on: list[list[int]] = []

    def decide(tally: Tally | None) -> tuple[list[NewEvent], int]:
        decided_on.append(list(tally.numbers) if tally else [])
        return next_number(tally)

    after, number = await one.log.decide_and_append(SUBJECT, stale_first(one, stale), decide)

    assert decided_on == [[1], [1, 2]]  # lost with 2, caught up, decided again
    assert number == 3
    assert after is not None
    assert after.numbers == [1, 2, 3]


async def test_an_aggregate_that_keeps_changing_is_refused_after_the_attempts(
    instances: tuple[Instance, Instance],
) -> None:
    """Every decision loses its race: after `attempts` tries the command is UNAVAILABLE with the
    caller's words, and nothing of it is written."""
    one, two = instances
    stale = await overtaken(one, two)
    last = await one.bus.last_subject_seq("MSG", SUBJECT)
    impatient = EventLog(one.bus, one.replay, attempts=2)
    decisions: list[int] = []

    def decide(tally: Tally | None) -> tuple[list[NewEvent], int]:
        decisions.append(1)
        return next_number(tally)

    with pytest.raises(Unavailable, match="busy; try again"):
        await impatient.decide_and_append(
            SUBJECT, stale_first(one, stale, always=True), decide, too_fast="busy; try again"
        )
    assert len(decisions) == 2
    assert await one.bus.last_subject_seq("MSG", SUBJECT) == last


async def test_a_one_shot_append_at_a_stale_position_is_refused_as_changed_meanwhile(
    instances: tuple[Instance, Instance],
) -> None:
    one, two = instances
    await two.log.append(SUBJECT, [counted(1)], NEW)
    with pytest.raises(ChangedMeanwhile) as refused:
        await one.log.append(SUBJECT, [counted(1)], NEW, conflict="someone else was first; try again")
    assert isinstance(refused.value, FailedPrecondition)  # answered as FAILED_PRECONDITION
    assert "someone else was first" in str(refused.value)


async def test_several_events_of_one_decision_follow_each_other(instances: tuple[Instance, Instance]) -> None:
    one, two = instances
    after, _ = await one.log.decide_and_append(SUBJECT, one.read, lambda tally: ([counted(1), counted(2)], None))
    assert after is not None
    assert (after.numbers, after.version) == ([1, 2], 2)
    await two.log.settle(SUBJECT)
    assert position_of(two.read()) == Position(2, after.last_stream_seq)


async def test_an_append_anywhere_is_applied_before_it_returns(instances: tuple[Instance, Instance]) -> None:
    """A marker on an aggregate whose order does not matter: no expected sequence, and the
    replay has applied it when the append returns."""
    one, two = instances
    await two.log.append(SUBJECT, [counted(7)], NEW)
    await one.log.append(SUBJECT, [counted(8)], ANYWHERE)
    tally = one.read()
    assert tally is not None
    assert tally.numbers[-1] == 8


async def test_a_new_aggregate_after_all_of_its_kind_is_decided_again_when_another_changed(
    instances: tuple[Instance, Instance],
) -> None:
    """A new aggregate whose decision reads every one of its kind (Position.of): appended after
    the newest of them, so another instance's write to any of them, not yet read, refuses it;
    it settles on the filter and decides again with that write in view."""
    one, two = instances
    before = await two.bus.last_subject_seq("MSG", CHANNELS_FILTER)  # nothing of the kind yet: 0
    await one.log.decide_and_append(SUBJECT, one.read, next_number)  # another tally, by the other instance
    other = channel_subject("tally-2")
    seen: list[list[str]] = []

    def decide(tally: Tally | None) -> tuple[list[NewEvent], None]:
        seen.append(sorted(s for s in two.tallies if s != other))
        return [counted(1)], None

    def position(_: Tally | None) -> Position:
        # The first decision at the kind's newest event as it was before the other's write.
        newest = before if not seen[1:] else max(t.last_stream_seq for t in two.tallies.values())
        return Position(0, newest, of=CHANNELS_FILTER)

    after, _ = await two.log.decide_and_append(other, lambda: two.read(other), decide, position=position)

    assert len(seen) == 2  # refused though its own subject was empty, then decided again
    assert seen[1] == [SUBJECT]  # ... after settling on every tally, the other's among them
    assert after is not None
    assert after.numbers == [1]


# --- pipelined rounds (decide_and_append_each with `ahead`) ---------------------------------


def tally_ahead(tally: Tally | None, event: NewEvent, at: Position) -> Tally:
    """The tally once `event` lands at `at`, as a new one: the projection's stays as it is."""
    assert at.last_seq is not None
    assert isinstance(event.payload, MessagePosted)
    return Tally(at.version, at.last_seq, [*(tally.numbers if tally else []), int(event.payload.body)])


@dataclass
class Recorded:
    """What a bus's appends did, in the order they happened."""

    steps: list[str] = field(default_factory=list)
    conflicts: int = 0


def recording(bus: EventBus) -> Recorded:
    """Wrap the bus's append (EventLog calls it per event) to record when each was sent and answered."""
    recorded, append = Recorded(), bus.append

    async def recorded_append(subject: str, event: NewEvent, **kwargs: Any) -> Appended:
        number = event.payload.body  # type: ignore[attr-defined]
        recorded.steps.append(f"sent {number}")
        try:
            appended = await append(subject, event, **kwargs)
        except ConcurrencyConflict:
            recorded.conflicts += 1
            raise
        recorded.steps.append(f"answered {number}")
        return appended

    bus.append = recorded_append  # type: ignore[method-assign]
    return recorded


@pytest.mark.parametrize("ahead", [None, tally_ahead], ids=["one-at-a-time", "pipelined"])
async def test_commands_decided_in_one_turn_land_in_order_each_with_its_own_outcome(
    instances: tuple[Instance, Instance], ahead: Any
) -> None:
    """decide_and_append_each: each command decided on the aggregate as the one before it left
    it (pipelined: as the appends before it will leave it); a refusal is that command's alone and
    the next is decided as if it had not been."""
    one, _ = instances

    def refuse(tally: Tally | None) -> tuple[list[NewEvent], int]:
        raise PermissionDenied("not yours")

    turns = [Turn(next_number), Turn(refuse), Turn(next_number), Turn(lambda t: ([], 0)), Turn(next_number)]
    outcomes = await one.log.decide_and_append_each(SUBJECT, one.read, turns, ahead=ahead)

    assert [o[1] if isinstance(o, tuple) else type(o) for o in outcomes] == [1, PermissionDenied, 2, 0, 3]
    tally = one.read()
    assert tally is not None
    assert (tally.numbers, tally.version) == ([1, 2, 3], 3)
    assert await one.bus.last_subject_seq("MSG", SUBJECT) == tally.last_stream_seq


async def test_a_pipelined_round_sends_every_append_before_the_first_is_answered(
    instances: tuple[Instance, Instance],
) -> None:
    one, _ = instances
    await one.log.decide_and_append(SUBJECT, one.read, next_number)  # the first: at an expected 0
    recorded = recording(one.bus)

    outcomes = await one.log.decide_and_append_each(SUBJECT, one.read, [Turn(next_number)] * 5, ahead=tally_ahead)

    assert [o[1] for o in outcomes if isinstance(o, tuple)] == [2, 3, 4, 5, 6]
    assert recorded.steps[:5] == [f"sent {n}" for n in range(2, 7)]
    assert recorded.conflicts == 0
    tally = one.read()
    assert tally is not None
    assert (tally.numbers, tally.version) == ([1, 2, 3, 4, 5, 6], 6)
    assert tally.last_stream_seq == await one.bus.last_subject_seq("MSG", SUBJECT)
    other = await one.bus.append(channel_subject("other"), counted(1), aggregate_version=1, expected_last_subject_seq=0)
    assert other.stream_seq == tally.last_stream_seq + 1  # the round's appends took the stream's sequences in order


async def test_another_event_between_two_pipelined_appends_breaks_the_chain_and_the_rest_go_one_at_a_time(
    instances: tuple[Instance, Instance],
) -> None:
    """Each append after the first names the one before it as the stream's newest event: one
    from elsewhere in between (here on the same connection, right after the first append) is
    refused by the stream, and the commands after it are decided again on the aggregate as the
    log holds it, so no number is taken twice or skipped."""
    one, _ = instances
    recorded = recording(one.bus)
    elsewhere: list[asyncio.Task[Appended]] = []

    def ahead_with_an_event_elsewhere(tally: Tally | None, event: NewEvent, at: Position) -> Tally:
        if not elsewhere:  # queued after the first append and before the second, on the same connection
            other = channel_subject("other")
            elsewhere.append(
                asyncio.create_task(one.bus.append(other, counted(1), aggregate_version=1, expected_last_subject_seq=0))
            )
        return tally_ahead(tally, event, at)

    turns = [Turn(next_number)] * 4
    outcomes = await one.log.decide_and_append_each(SUBJECT, one.read, turns, ahead=ahead_with_an_event_elsewhere)

    assert [o[1] for o in outcomes if isinstance(o, tuple)] == [1, 2, 3, 4]
    assert recorded.conflicts >= 1  # the chain was broken, and mended one append at a time
    assert (await elsewhere[0]).stream_seq == 2
    tally = one.read()
    assert tally is not None
    assert (tally.numbers, tally.version) == ([1, 2, 3, 4], 4)
    assert tally.last_stream_seq == await one.bus.last_subject_seq("MSG", SUBJECT)


async def test_rounds_on_two_aggregates_at_once_do_not_break_each_others_chains(
    instances: tuple[Instance, Instance],
) -> None:
    """A round pipelines only while no other append of the instance is on its way (which would
    take the stream sequence its first append is predicted at): the second round goes one
    append at a time, after the first round's appends, and no append is refused."""
    one, _ = instances
    recorded = recording(one.bus)
    subjects = [channel_subject("tally"), channel_subject("other")]

    rounds = await asyncio.gather(
        *(
            one.log.decide_and_append_each(s, lambda s=s: one.read(s), [Turn(next_number)] * 4, ahead=tally_ahead)
            for s in subjects
        )
    )

    assert [[o[1] for o in r if isinstance(o, tuple)] for r in rounds] == [[1, 2, 3, 4]] * 2
    assert recorded.conflicts == 0
    for subject in subjects:
        tally = one.read(subject)
        assert tally is not None
        assert (tally.numbers, tally.version) == ([1, 2, 3, 4], 4)
