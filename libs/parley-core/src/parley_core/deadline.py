"""How long the call being served may still take, for the writes made on its behalf.

The server interceptor (server_interceptors.CallerCheckAndErrors) sets it from the caller's gRPC deadline,
a little before that deadline, so that a write the event log did not confirm in time is
answered by the service (UNAVAILABLE, outcome unknown: retry with the same key) instead of
being cut off by the deadline, which would tell the caller nothing about what happened.
"""

from __future__ import annotations

import asyncio
import contextvars

# Work done outside any call (a consumer's handler, a job) gets this long per write.
DEFAULT_BUDGET_S = 10.0
# The answer leaves this long before the caller's deadline (a fifth of what is left, if less),
# time for it to travel back through the gateway.
ANSWER_MARGIN_S = 0.5

_answer_by: contextvars.ContextVar[float | None] = contextvars.ContextVar("parley_answer_by", default=None)


class answering_within:
    """Inside the block, writes give up in time to answer within `time_remaining` seconds (None: no deadline).

    A plain class, not a generator: the server interceptor enters it on every call."""

    __slots__ = ("_at", "_token")

    def __init__(self, time_remaining: float | None) -> None:
        self._at: float | None = None
        if time_remaining is not None:
            margin = min(ANSWER_MARGIN_S, max(time_remaining, 0.0) / 5)
            self._at = asyncio.get_running_loop().time() + time_remaining - margin
        self._token: contextvars.Token[float | None] | None = None

    def __enter__(self) -> None:
        if self._at is not None:
            self._token = _answer_by.set(self._at)

    def __exit__(self, *_: object) -> None:
        if self._token is not None:
            _answer_by.reset(self._token)


def give_up_at(default_s: float = DEFAULT_BUDGET_S) -> float:
    """The event-loop time by which a write must have given up (the call's, else `default_s` from now)."""
    now = asyncio.get_running_loop().time()
    answer_by = _answer_by.get()
    return now + default_s if answer_by is None else answer_by
