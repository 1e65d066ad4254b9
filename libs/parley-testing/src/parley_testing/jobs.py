"""A pause that a test drives, for periodic jobs (parley_core.jobs): time passes when the test says."""

from __future__ import annotations

import asyncio


class ManualPause:
    """Each pause of the job is recorded (`asked`) and lasts until `elapse()` or the job's wake."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self._changed = asyncio.Condition()
        self._go = asyncio.Event()

    async def __call__(self, seconds: float, wake: asyncio.Event) -> None:
        self._go = go = asyncio.Event()
        async with self._changed:
            self.asked.append(seconds)
            self._changed.notify_all()
        waiting = [asyncio.ensure_future(go.wait()), asyncio.ensure_future(wake.wait())]
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiting:
                waiter.cancel()

    async def paused(self, times: int, *, timeout: float = 10.0) -> None:
        """Until the job has entered its `times`-th pause (so its ticks before it have ended)."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.asked) >= times), timeout)

    def elapse(self) -> None:
        """The current pause is over."""
        self._go.set()
