"""How every service writes its own stream: read -> decide -> append -> settle, in one place.

A command reads its aggregate from the service's projection, a pure decision turns it into
events and a result, the events are appended at the aggregate's position as read (the
stream's expected last subject sequence), and the projection applies them before the
command answers (read your writes). Two instances that decide on the same aggregate at once
cannot both land: the loser catches up with the stream (settles) and decides again.

The write path of a send (docs/performance.md): no copy of the aggregate is made (a
decision reads it and must not change it), and a decision that appends one event costs one
append and nothing more: its own write is applied from the copy it sealed, when the replay
delivers it or when the stream acknowledges it, whichever comes first (Replay.apply_own), with
no decoding and no wait for the replay. Commands waiting on one aggregate may be decided
together, in one turn of its lock (decide_and_append_each); given how an event still on its way
leaves the aggregate (`ahead`), their appends are pipelined: each is decided on the aggregate as
the ones before it will leave it and sent before they are acknowledged, chained to the one
before it by that one's event id and predicted stream sequence, so the stream takes it only
right after it (docs/performance.md, "What limits one channel"). A chain the stream broke (another
writer's event in between) is finished one append at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, Protocol, TypeVar, cast

import nats.errors

from parley_core.bus import Appended, ConcurrencyConflict, EventBus, Replay
from parley_core.envelope import NewEvent
from parley_core.errors import FailedPrecondition, Unavailable

log = logging.getLogger(__name__)

APPEND_ATTEMPTS = 5
TOO_FAST = "this is changing too fast; try again"
CHANGED_MEANWHILE = "it changed at the same time; try again"

A = TypeVar("A")
R = TypeVar("R")


class Position(NamedTuple):
    """Where an aggregate stands in the stream: how many events it holds, and the stream
    sequence of its last one (0: it has none yet; None: appended to wherever it is, for an
    aggregate whose order does not matter, such as a lockout counter or a release record).

    `of`: a subject filter whose newest event `last_seq` is instead, for a new aggregate whose
    decision reads every aggregate of its kind (one unfinished roll-out per service): it is
    appended after all of them, so a rival's meanwhile is read before deciding again."""

    version: int
    last_seq: int | None
    of: str | None = None


NEW = Position(0, 0)
ANYWHERE = Position(0, None)


class Versioned(Protocol):
    version: int
    last_stream_seq: int


def position_of(aggregate: Versioned | None) -> Position:
    """The position of an aggregate that keeps its own (None: one that does not exist yet)."""
    return Position(aggregate.version, aggregate.last_stream_seq) if aggregate is not None else NEW


# What a decision returns: the events to append (none: nothing changes, e.g. a retried
# command) and what the command answers.
Decision = tuple[Sequence[NewEvent], R]


@dataclass(frozen=True)
class Turn(Generic[A, R]):
    """One command of several decided on one aggregate in one turn of its lock
    (EventLog.decide_and_append_each): its decision, and the context it is decided and appended
    in (its own caller's trace and deadline), entered each time it is decided (a pipelined
    round's broken chain decides a command again)."""

    decide: Callable[[A], Decision[R]]
    scope: contextlib.AbstractContextManager[object] = field(default_factory=contextlib.nullcontext)


# How an event on its way leaves an aggregate, for deciding the next command of a round before
# the event is acknowledged: (aggregate, event, the position the event will give it) -> the
# aggregate after it, or None when it cannot say (the round's later commands go one at a time).
# It must leave what `read` returns as it is; it may change and return an aggregate it returned.
Ahead = Callable[[A, NewEvent, Position], A | None]
Outcome = tuple[A, R] | Exception


@dataclass
class _Sent(Generic[R]):
    """A command of a pipelined round: its decision's result or refusal, and its append if it
    made one (sent before the ones before it were acknowledged)."""

    result: R | Exception
    append: asyncio.Task[Appended] | None = None
    predicted: int = 0  # the stream sequence the append gets if the chain holds


def _refusal(exc: Exception, subject: str) -> Exception:
    """What a command answers for its append's failure: NATS's own errors as Unavailable."""
    if isinstance(exc, nats.errors.Error):
        log.error("append refused", exc_info=exc, extra={"subject": subject})
        return Unavailable(f"the event log refused the change ({exc}); it was not stored, try again")
    return exc


class ChangedMeanwhile(FailedPrecondition):
    """A one-shot append lost its race: the aggregate changed after it was read."""


class EventLog:
    """One service's writes to its own stream, each applied to this instance's projection
    before the write returns."""

    def __init__(self, bus: EventBus, replay: Replay, *, attempts: int = APPEND_ATTEMPTS) -> None:
        self._bus = bus
        self._replay = replay
        self._attempts = attempts
        # One writer per aggregate (subject) inside this instance; see decide_and_append.
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # The newest stream sequence this instance's appends were given: with the replay's
        # position, where a pipelined round predicts its first append lands.
        self._newest_appended = 0
        # Appends of this instance on their way, to any aggregate of the stream, and a pipelined
        # round's that are not sent yet (see _pipelined).
        self._appending = 0
        self._unsent: set[asyncio.Task[Appended]] = set()

    async def decide_and_append(
        self,
        subject: str,
        read: Callable[[], A],
        decide: Callable[[A], Decision[R]],
        *,
        position: Callable[[A], Position] = position_of,  # type: ignore[assignment]
        too_fast: str = TOO_FAST,
    ) -> tuple[A, R]:
        """The one way a command changes an aggregate: read it, decide, append the decision's
        events at the position read, and return the aggregate after them with the decision's
        result. `decide` may raise a domain error (the command is refused, nothing is written).

        One writer per aggregate inside this instance; across instances the stream's expected
        sequence settles races: the loser catches up and decides again, `attempts` times at most
        (then Unavailable, with `too_fast`).
        """
        async with self._locks[subject]:
            return await self._decided(subject, read, decide, position, too_fast)

    async def decide_and_append_each(
        self,
        subject: str,
        read: Callable[[], A],
        turns: Sequence[Turn[A, R]],
        *,
        position: Callable[[A], Position] = position_of,  # type: ignore[assignment]
        too_fast: str = TOO_FAST,
        ahead: Ahead[A] | None = None,
    ) -> list[Outcome[A, R]]:
        """Several commands on one aggregate, each as decide_and_append would make it, in one turn
        of its lock and in order: each is decided on the aggregate as the ones before it left it.
        Each has its own outcome: a refusal or a failed append is that command's alone (returned,
        not raised), and the next one is decided on what the log holds then.

        With `ahead`, the appends are pipelined (_pipelined); a command the pipeline could not
        settle (its chain broken before it) is decided again after it, one at a time."""
        async with self._locks[subject]:
            pipelined: list[Outcome[A, R] | None] = [None] * len(turns)
            if ahead is not None and len(turns) > 1:
                pipelined = await self._pipelined(subject, read, turns, position, ahead)
            outcomes: list[Outcome[A, R]] = []
            for turn, settled in zip(turns, pipelined, strict=True):
                if settled is None:  # not settled by the pipeline: decided (again) on the projection
                    settled = await self._one_at_a_time(subject, read, turn, position, too_fast)  # noqa: PLW2901
                outcomes.append(settled)
        return outcomes

    async def _one_at_a_time(
        self, subject: str, read: Callable[[], A], turn: Turn[A, R], position: Callable[[A], Position], too_fast: str
    ) -> Outcome[A, R]:
        try:
            with turn.scope:
                return await self._decided(subject, read, turn.decide, position, too_fast)
        except Exception as exc:  # the command's own outcome; the others go on
            return exc

    async def _pipelined(
        self,
        subject: str,
        read: Callable[[], A],
        turns: Sequence[Turn[A, R]],
        position: Callable[[A], Position],
        ahead: Ahead[A],
    ) -> list[Outcome[A, R] | None]:
        """A round's appends sent one after another without waiting for acknowledgements.

        Each command is decided on the aggregate as the appends before it will leave it (`ahead`).
        The first append expects the aggregate's position as read, as one alone would; each later
        one expects the one before it as the subject's newest message, at the stream sequence
        predicted for it, and as the stream's newest message (by its event id). So the stream
        takes an append only right after the one it was decided after: once one is refused
        (another writer's event came in between, or the prediction was wrong), so is every later
        one. Outcomes are settled in order: an append of the unbroken chain is applied from its
        sealed copy (apply_own); after the break, an append that landed all the same is waited
        for through the replay, and every other command (None) is decided again one at a time.
        """
        if self._appending:
            # Another aggregate's append on its way takes the sequence this round's first would be
            # predicted at, breaking the chain: one at a time then, as with no pipelining.
            return [None] * len(turns)
        aggregate = read()
        version, expected, of = position(aggregate)
        if expected is None or of is not None:
            return [None] * len(turns)  # appended wherever, or after another subject: nothing to chain
        # Where the first append lands if nothing else is written meanwhile (else the chain breaks).
        predicted = max(expected, self._replay.last_seq, self._newest_appended)
        previous_id: str | None = None
        sent: list[_Sent[R]] = []
        for turn in turns:
            with turn.scope:  # the decision and its append (a task) in the command's own context
                try:
                    events, result = turn.decide(aggregate)
                except Exception as exc:  # this command's refusal
                    sent.append(_Sent(exc))
                    continue
                if not events:
                    sent.append(_Sent(result))
                    continue
                if len(events) > 1:
                    break  # several events, each after the one before: one at a time
                [event] = events
                version, predicted = version + 1, predicted + 1
                append = asyncio.create_task(
                    self._chained(subject, event, version, expected_last_subject_seq=expected, after_id=previous_id)
                )
            self._appending += 1
            self._unsent.add(append)
            append.add_done_callback(self._answered)
            sent.append(_Sent(result, append, predicted))
            expected, previous_id = predicted, event.event_id
            try:
                after = ahead(aggregate, event, Position(version, predicted))
            except Exception:
                log.exception("a pipelined round could not go on", extra={"subject": subject})
                after = None
            if after is None:
                break  # the later commands are decided one at a time, on the projection
            aggregate = after
        outcomes: list[Outcome[A, R] | None] = []
        unbroken = True  # every append so far landed as itself, where predicted, and is applied
        try:
            for one in sent:
                if one.append is None:  # decided on what the appends before it would leave: so if they did
                    if not unbroken:
                        outcomes.append(None)
                    elif isinstance(one.result, Exception):
                        outcomes.append(one.result)
                    else:
                        outcomes.append((read(), one.result))
                    continue
                try:
                    appended = await one.append
                    self._newest_appended = max(self._newest_appended, appended.stream_seq)
                    if unbroken:
                        await self._replay.apply_own(appended)
                    else:
                        await self._replay.wait_for_seq(appended.stream_seq)
                except ConcurrencyConflict:  # not stored: decided again once the round is settled
                    outcomes.append(None)
                    unbroken = False
                    continue
                except Exception as exc:  # the command's own outcome, as one alone would have it
                    outcomes.append(_refusal(exc, subject))
                    unbroken = False
                    continue
                outcomes.append((read(), cast(R, one.result)))
                unbroken = unbroken and not appended.duplicate and appended.stream_seq == one.predicted
        finally:
            for one in sent:
                if one.append is not None:
                    one.append.cancel()  # cancelled on the way out (the call was), as one alone would be
        return [*outcomes, *[None] * (len(turns) - len(outcomes))]

    async def _chained(
        self, subject: str, event: NewEvent, version: int, *, expected_last_subject_seq: int, after_id: str | None
    ) -> Appended:
        """One append of a pipelined round, sent as its task starts (the round's tasks start one
        after another, so their appends go out together, in order)."""
        task = asyncio.current_task()
        assert task is not None
        self._unsent.discard(task)  # bus.append writes it before it first waits
        return await self._bus.append(
            subject,
            event,
            aggregate_version=version,
            expected_last_subject_seq=expected_last_subject_seq,
            expected_last_msg_id=after_id,
            own=self._replay,
        )

    def _answered(self, append: asyncio.Task[Appended]) -> None:
        """A pipelined append answered (or cancelled with its round); its failure is read by the
        round, not logged as lost."""
        self._appending -= 1
        self._unsent.discard(append)
        if not append.cancelled():
            append.exception()

    async def _decided(
        self,
        subject: str,
        read: Callable[[], A],
        decide: Callable[[A], Decision[R]],
        position: Callable[[A], Position],
        too_fast: str,
    ) -> tuple[A, R]:
        """Decide and append until the append lands at the position read (the caller holds the lock)."""
        for _ in range(self._attempts):
            aggregate = read()
            events, result = decide(aggregate)
            if not events:
                return aggregate, result
            at = position(aggregate)
            try:
                await self._append(subject, events, at)
            except ConcurrencyConflict:
                await self.settle(at.of or subject)
                continue
            return read(), result
        raise Unavailable(too_fast)

    async def append(
        self, subject: str, events: Sequence[NewEvent], at: Position, *, conflict: str = CHANGED_MEANWHILE
    ) -> None:
        """Append once at the aggregate's position as read, then read our own write. A lost race
        is ChangedMeanwhile (with `conflict`): the caller's client tries again, or the caller
        takes it as done (a create that another call made first)."""
        try:
            await self._append(subject, events, at)
        except ConcurrencyConflict:
            raise ChangedMeanwhile(conflict) from None

    async def _append(self, subject: str, events: Sequence[NewEvent], at: Position) -> None:
        """Each event right after the one before it (the first at `at`). One appended at an
        expected sequence is applied to the projection as the stream acknowledges it: sound, as
        the stream took it right after the event the decision read, which the projection holds.
        A later event's lost race leaves the earlier ones written; the caller decides again."""
        version, last_seq, of = at
        for event in events:
            version += 1
            if self._unsent:  # a pipelined round's appends go out first (their tasks start before
                await asyncio.sleep(0)  # this one resumes): nothing between them
            self._appending += 1
            try:
                appended = await self._bus.append(
                    subject,
                    event,
                    aggregate_version=version,
                    expected_last_subject_seq=last_seq,
                    expected_last_of=of,
                    own=self._replay,
                )
            except nats.errors.Error as exc:
                raise _refusal(exc, subject) from exc
            finally:
                self._appending -= 1
            self._newest_appended = max(self._newest_appended, appended.stream_seq)
            if last_seq is None:
                await self._replay.wait_for_seq(appended.stream_seq)
            else:
                await self._replay.apply_own(appended)
                last_seq, of = appended.stream_seq, None  # the next event: after this one

    async def append_after_last(self, subject: str, event: NewEvent) -> None:
        """Append after whatever the subject holds (a marker, or an aggregate this projection
        keeps no position of), then wait until the replay has applied it."""
        await self._replay.wait_for_seq(await self._bus.append_after_last(subject, event))

    async def settle(self, subject: str | None = None) -> None:
        """Let the projection catch up with `subject` as the stream holds it now (None: with the
        whole stream): after a lost race, before deciding again, or to see another instance's write."""
        stream = self._replay.stream
        if subject is None:
            last = (await self._bus.js.stream_info(stream)).state.last_seq
        else:
            last = await self._bus.last_subject_seq(stream, subject)
        await self._replay.wait_for_seq(last)
