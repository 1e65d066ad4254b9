"""Failed-login counters per account and per source with exponential lockout; no I/O.

Counters are keyed by the normalized username whether or not such an account exists, so a
lockout reveals nothing about which names are real. The clock is a parameter so the policy
can be tested (and released) without waiting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from time import monotonic


@dataclass
class _Counter:
    failures: int = 0
    locked_until: float = 0.0


@dataclass(frozen=True)
class LockoutPolicy:
    threshold: int  # failures allowed before the first lockout
    base_s: float  # first lockout; each further failure while at the threshold doubles it
    max_s: float

    def duration(self, failures: int) -> float:
        excess = failures - self.threshold
        return 0.0 if excess < 0 else min(self.base_s * (2**excess), self.max_s)


ACCOUNT_POLICY = LockoutPolicy(threshold=5, base_s=2.0, max_s=15 * 60)
SOURCE_POLICY = LockoutPolicy(threshold=20, base_s=2.0, max_s=15 * 60)


@dataclass(frozen=True)
class Locked:
    scope: str  # "account" or "source"
    retry_after_s: float


@dataclass
class LockoutBook:
    account_policy: LockoutPolicy = ACCOUNT_POLICY
    source_policy: LockoutPolicy = SOURCE_POLICY
    clock: Callable[[], float] = monotonic
    _accounts: dict[str, _Counter] = field(default_factory=dict)
    _sources: dict[str, _Counter] = field(default_factory=dict)

    def check(self, username: str, source: str) -> Locked | None:
        """Refuse before the password is even checked while either counter is locked."""
        now = self.clock()
        for scope, book, key in (("account", self._accounts, username), ("source", self._sources, source)):
            counter = book.get(key)
            if counter is not None and counter.locked_until > now:
                return Locked(scope, counter.locked_until - now)
        return None

    def record_failure(self, username: str, source: str) -> Locked | None:
        """Count a failure; returns the lockout it starts, if any."""
        now = self.clock()
        started: Locked | None = None
        for scope, book, key, policy in (
            ("account", self._accounts, username, self.account_policy),
            ("source", self._sources, source, self.source_policy),
        ):
            counter = book.setdefault(key, _Counter())
            counter.failures += 1
            if (duration := policy.duration(counter.failures)) > 0:
                counter.locked_until = now + duration
                if started is None or duration > started.retry_after_s:
                    started = Locked(scope, duration)
        return started

    def record_success(self, username: str) -> None:
        """Only the account's counter resets: one good password must not clear a source that
        is guessing at many accounts."""
        self._accounts.pop(username, None)
