"""Periodic jobs: the one way Parley does something "every so often, until stopped".

    job = every(60.0, apply_retention, name="retention")
    job.start()
    ...
    await job.stop()

The contract, the same for every job:

- The first tick runs at `start()` (or `first_after` seconds later); each next one `interval`
  after the previous tick *ended*, so a slow tick never causes a burst of catch-up ticks.
  `interval` may be a function, asked after each tick (a schedule that depends on what the tick
  found, as the signing keys' is). `wake()` runs the next tick at once (something changed).
- A tick that raises is logged (a warning with the job's name and the traceback) and the job goes
  on at its next interval (not sooner than `after_failure` seconds): a periodic job retries by
  being periodic, and one failing pass (NATS or the database briefly away) must not end it for the
  life of the process. No job in Parley must end on a failure; one that would, ends itself from
  its tick with `stop_soon()` (a tick never awaits its own job's `stop()`, which waits for it).
- `await stop()` is the one way to end a job: no tick starts after it is called, a running tick
  gets `grace` seconds to finish and is then cancelled (0 for a tick that is safe to cut short,
  e.g. resumable or read-only work), and stop() returns once the job's task has ended. It never
  raises what a tick raised.
- The waiting between ticks goes through a `Pause`: the real one sleeps; a test passes its own
  (parley_testing.jobs.ManualPause) and moves the job tick by tick, without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

log = logging.getLogger(__name__)

# How long stop() lets a running tick finish before cancelling it, unless the job says otherwise.
STOP_GRACE_S = 5.0

Tick = Callable[[], Awaitable[object]]


class Pause(Protocol):
    async def __call__(self, seconds: float, wake: asyncio.Event) -> None:
        """Return after `seconds`, or as soon as `wake` is set."""


async def sleeping(seconds: float, wake: asyncio.Event) -> None:
    """The real pause."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wake.wait(), seconds)


class PeriodicJob:
    """A tick run periodically in a task of its own; made by `every`."""

    def __init__(
        self,
        interval: float | Callable[[], float],
        tick: Tick,
        *,
        name: str,
        first_after: float = 0.0,
        after_failure: float = 0.0,
        grace: float = STOP_GRACE_S,
        pause: Pause = sleeping,
    ) -> None:
        self.name = name
        self._interval = interval
        self._tick = tick
        self._first_after = first_after
        self._after_failure = after_failure
        self._grace = grace
        self._pause = pause
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.ticks = 0  # ticks ended (well or not): for status and tests
        self.failures = 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"job {self.name} was started already")
        self._task = asyncio.create_task(self._run(), name=f"job-{self.name}")

    def wake(self) -> None:
        """Run the next tick now (or right after the running one)."""
        self._wake.set()

    def stop_soon(self) -> None:
        """No further tick; for a tick that decides its job is done. stop() still waits for the end."""
        self._stopping = True
        self._wake.set()

    async def stop(self) -> None:
        self.stop_soon()
        task = self._task
        if task is None:
            return
        if not task.done():  # between ticks, the wake ends the pause at once
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), self._grace)
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def _next_interval(self) -> float:
        return self._interval() if callable(self._interval) else self._interval

    async def _run(self) -> None:
        if self._first_after > 0:
            await self._pause(self._first_after, self._wake)
        while not self._stopping:
            self._wake.clear()  # a wake() during the tick runs the next one at once
            failed = await self._tick_once()
            if self._stopping:
                return
            try:
                delay = self._next_interval()
            except Exception:
                log.exception(
                    "periodic job's next interval failed; pausing as after a failure", extra={"job": self.name}
                )
                delay, failed = self._after_failure, True
            if failed:
                delay = max(delay, self._after_failure)
            await self._pause(max(delay, 0.0), self._wake)

    async def _tick_once(self) -> bool:
        """Runs one tick; True if it failed (logged here, once, with the job's name)."""
        try:
            await self._tick()
        except Exception:
            self.failures += 1
            # A warning: the next tick retries, as a reconnecting client does; a job whose failure
            # needs an operator says so in its own log line or metric.
            log.warning(
                "periodic job's tick failed; it runs again at its next interval",
                extra={"job": self.name},
                exc_info=True,
            )
            return True
        else:
            return False
        finally:
            self.ticks += 1


# The helper's name where a job is made: `every(60.0, tick, name="retention")`.
every = PeriodicJob
