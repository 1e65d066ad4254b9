"""A clock a test moves by hand, for code that takes its time from a `clock()` callable: an
expiry, a quiet period or a refill is then reached by `clock.now += seconds`, never by a sleep."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ManualClock"]


@dataclass
class ManualClock:
    now: float = 1000.0  # unix seconds; any start will do unless the code compares with the real time

    def __call__(self) -> float:
        return self.now
