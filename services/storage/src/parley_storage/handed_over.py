"""A stream the detector reads without a second reader of it: storage's archive consumer already
delivers every event of MSG, so after start the detector is fed from there (after each batch
committed) rather than by a replay of its own, which cost a second delivery of every message.

At start the detector still needs the stream's history (its rules keep their state in memory):
a replay up to the stream's last sequence at that moment (the hand-over point), stopped once it
is past it. Every later event comes from the archive consumer, whose events up to the hand-over
the replay has already applied. Those that arrive before the replay is done wait in a queue, and
one task applies them after it, in stream order (each sequence once: a redelivery is skipped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from parley_core.bus import EventBus, ProjectionHalted, ReceivedEvent, Replay

log = logging.getLogger(__name__)

Observer = Callable[[ReceivedEvent], Awaitable[None]]
# A stalled replay (nothing applied for this long) is logged and waited for again.
STALL_S = 60.0


class HandedOverStream:
    def __init__(self, bus: EventBus, *, stream: str, filter_subject: str, observe: Observer) -> None:
        if not filter_subject.endswith(".>"):
            raise ValueError(f"a hand-over reads a subject tree (ending in '.>'), not {filter_subject}")
        self.bus, self.stream, self.filter_subject = bus, stream, filter_subject
        self._prefix = filter_subject[:-1]
        self._observe = observe
        self._handover: int | None = None  # unknown until start: nothing archived before counts
        self._applied = 0  # the newest sequence handed to the detector
        self._queue: asyncio.Queue[ReceivedEvent] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.replay: Replay | None = None

    async def start(self) -> None:
        await self.bus.wait_for_stream(self.stream)
        self._handover = int((await self.bus.js.stream_info(self.stream)).state.last_seq or 0)
        self.replay = await self.bus.replay(
            stream=self.stream, filter_subject=self.filter_subject, handler=self._replayed
        )
        self._task = asyncio.create_task(self._run(self.replay), name=f"detector-{self.stream}")

    def archived(self, batch: Sequence[ReceivedEvent]) -> None:
        """A committed batch of the archive consumer: its events past the hand-over, queued.
        Any event archived before start() read the hand-over point was on the stream then, so
        at or below it: the replay applies it."""
        if self._handover is None:
            return
        for event in sorted(batch, key=lambda e: e.stream_seq):
            if event.stream_seq > self._handover and event.subject.startswith(self._prefix):
                self._queue.put_nowait(event)

    async def _replayed(self, event: ReceivedEvent) -> None:
        assert self._handover is not None
        if event.stream_seq <= self._handover:
            self._applied = event.stream_seq
            await self._observe(event)

    async def _run(self, replay: Replay) -> None:
        try:
            await self._replayed_to_handover(replay)
        except ProjectionHalted:
            return  # the bus halted the process (health NOT_SERVING): nothing more is applied
        finally:
            await replay.stop()
        while True:
            event = await self._queue.get()
            if event.stream_seq <= self._applied:
                continue  # redelivered to the archive consumer: already applied
            self._applied = event.stream_seq
            try:
                await self._observe(event)
            except Exception:  # the archive goes on; the detector misses this one event
                log.exception("the detector failed on an event", extra={"stream_seq": event.stream_seq})

    async def _replayed_to_handover(self, replay: Replay) -> None:
        while replay.last_seq < (self._handover or 0):
            try:
                await replay.wait_caught_up(STALL_S)
                return  # caught up: what is left up to the hand-over was deleted, or is not on the filter
            except TimeoutError:
                log.warning("the detector's replay is stalled", extra={"stream": self.stream, "at": replay.last_seq})

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
