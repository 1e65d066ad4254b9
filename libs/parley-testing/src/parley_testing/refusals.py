"""What a test sees when nats-server refuses a request for its permissions: the violation, at once.

The server answers such a request never; it tells the client with an asynchronous error (the
client's error_cb). So a test waits for that error, not for the request to time out (nats-py's
delete_msg ignores the JetStream context's timeout and waits 5 s for an answer that never comes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from nats.errors import Error as NatsError

__all__ = ["ErrorRecorder", "refused"]

WAIT_S = 5.0


class ErrorRecorder:
    """An error_cb that lets a test wait for a specific asynchronous server error."""

    def __init__(self) -> None:
        self.errors: list[Exception] = []
        self._changed = asyncio.Condition()

    async def callback(self, error: Exception) -> None:
        async with self._changed:
            self.errors.append(error)
            self._changed.notify_all()

    async def wait_for(self, *fragments: str, after: int = 0) -> Exception:
        """The first error (from the `after`-th on) whose text contains all ``fragments`` (any case)."""

        def match() -> Exception | None:
            for error in self.errors[after:]:
                text = str(error).lower()
                if all(f.lower() in text for f in fragments):
                    return error
            return None

        async with asyncio.timeout(WAIT_S), self._changed:
            await self._changed.wait_for(lambda: match() is not None)
        found = match()
        assert found is not None
        return found


async def refused(call: Awaitable[object], errors: ErrorRecorder, *fragments: str) -> Exception:
    """`call` (a JetStream API request) is refused: a new permissions violation for publishing to a
    subject with ``fragments`` in it, and no answer. Returns the violation."""
    seen = len(errors.errors)
    pending = asyncio.ensure_future(call)
    try:
        violation = await errors.wait_for("permissions violation", "publish", *fragments, after=seen)
    finally:
        if not pending.done():
            pending.cancel()  # its request was dropped: it could only time out
    try:
        await pending
    except (asyncio.CancelledError, NatsError, TimeoutError):
        return violation
    raise AssertionError(f"the server answered a request it reported refused ({violation})")
