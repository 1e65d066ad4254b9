"""One password or code check at a time per account, inside one auth instance.

Why: a lockout is checked before the secret and a failure counts once it is on the AUTH stream,
so guesses sent at the same moment would all pass the check before the first is counted (a
burst of 300 got 300 checks past a backstop of 50). Under the gate, an attempt checks the
lockout, the secret and counts its failure before the next attempt at that account begins, so
an instance checks no guess past the threshold. A few attempts wait their turn (a person's two
devices logging in at once); more are refused at once, so a burst holds no memory or time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from parley_core.errors import ResourceExhausted

# Attempts at one account that may wait behind the one being checked; beyond, refused.
WAITING_MAX = 4
BUSY = "a login for this account is already being checked; try again"


@dataclass
class _Gate:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    attempts: int = 0  # the one checked and those waiting


@dataclass
class CheckGates:
    """The gates by account key (the normalized username, or an unknown name's key)."""

    waiting_max: int = WAITING_MAX
    _gates: dict[str, _Gate] = field(default_factory=dict)

    @contextlib.asynccontextmanager
    async def one_at_a_time(self, key: str) -> AsyncIterator[None]:
        gate = self._gates.setdefault(key, _Gate())
        if gate.attempts > self.waiting_max:
            raise ResourceExhausted(BUSY)
        gate.attempts += 1
        try:
            async with gate.lock:
                yield
        finally:
            gate.attempts -= 1
            if gate.attempts == 0:
                del self._gates[key]  # no entry per name ever tried
