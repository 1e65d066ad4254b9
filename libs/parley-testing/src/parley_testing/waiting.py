"""Waiting on a condition with a deadline: the one way Parley's tests wait, never a bare sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    what: str = "the condition",
    timeout: float = 30.0,
    *,
    interval: float = 0.05,
    passing: tuple[type[Exception], ...] = (),
) -> T:
    """Poll the async `probe` until it returns something other than None; that value is returned.
    An error of a `passing` type (the service asked is restarting, say) counts as not yet."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            if (result := await probe()) is not None:
                return result
        except passing as error:
            last_error = error
        if time.monotonic() > deadline:
            why = f" (last error: {last_error})" if last_error is not None else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{why}")
        await asyncio.sleep(interval)


async def until(
    condition: Callable[[], bool], what: str = "the condition", timeout: float = 30.0, *, interval: float = 0.05
) -> None:
    """Poll a synchronous `condition` (a projection, a counter) without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05) -> None:
    """The blocking form, for synchronous tests that drive the CLI in subprocesses."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
