"""Messaging's writes to the MSG stream: read -> decide -> append -> settle, one way for every
aggregate (channels, to-device queues), each write applied to this instance's projection as soon
as the stream acknowledged it (Replay.apply_own), not after a trip through the replay.

The write path of every send (docs/performance.md): no copy of a channel is made, and a
decision that appends costs one append and nothing more.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from typing import Protocol, TypeVar

from parley_core.bus import ConcurrencyConflict, EventBus, Replay
from parley_core.envelope import NewEvent
from parley_core.errors import Unavailable

APPEND_ATTEMPTS = 5
A = TypeVar("A", bound="Versioned | None")


class Versioned(Protocol):
    version: int
    last_stream_seq: int


class MessagingLog:
    def __init__(self, bus: EventBus, replay: Replay) -> None:
        self._bus = bus
        self._replay = replay
        # One writer per aggregate (subject) inside this instance; see decide_and_append.
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def decide_and_append(self, subject: str, read: Callable[[], A], decide: Callable[[A], NewEvent | None]) -> A:
        """The one way a command changes an aggregate: read it, let `decide` make the event (None:
        nothing to do, e.g. a retry), append at the version read, and return the aggregate after.

        One writer per aggregate inside this instance; across instances the stream's expected
        sequence settles races: the loser catches up and decides again.
        """
        async with self._locks[subject]:
            for _ in range(APPEND_ATTEMPTS):
                aggregate = read()
                event = decide(aggregate)
                if event is None:
                    return aggregate
                try:
                    await self.append_to(subject, event, aggregate)
                except ConcurrencyConflict:
                    await self.settle(subject)
                    continue
                return read()
        raise Unavailable("this is changing too fast; try again")

    async def append_to(self, subject: str, event: NewEvent, after: Versioned | None) -> None:
        """Append to an aggregate as it was read (None: a new one), then read our own write."""
        appended = await self._bus.append(
            subject,
            event,
            aggregate_version=after.version + 1 if after else 1,
            expected_last_subject_seq=after.last_stream_seq if after else 0,
        )
        await self._replay.apply_own(appended)

    async def append_unchecked(self, subject: str, event: NewEvent) -> None:
        """Append after whatever the subject holds (an aggregate this projection does not know),
        then read our own write."""
        await self._replay.wait_for_seq(await self._bus.append_after_last(subject, event))

    async def settle(self, subject: str) -> None:
        """After a lost race, let the projection catch up with the aggregate before deciding again."""
        await self._replay.wait_for_seq(await self._bus.last_subject_seq("MSG", subject))
