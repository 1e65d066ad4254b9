"""Failed-login counters per account and per source with exponential lockout; no I/O.

Counters are keyed by the normalized username whether or not such an account exists, so a
lockout reveals nothing about which names are real. The book is a projection of the
LoginFailureCounted / LoginFailuresCleared events on the AUTH stream, fed with each event's
own time, so every auth instance (and a restarted one) computes the same lockouts. The clock
that decides whether a lockout is still running is a parameter so tests can release it
without waiting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from time import time


@dataclass(frozen=True)
class LockoutPolicy:
    threshold: int  # failures allowed before the first lockout
    base_s: float  # first lockout; each further failure while at the threshold doubles it
    max_s: float
    # A count with no new failure for this long starts again from zero: the counts are durable
    # now, and a typo of last month must not weigh on today (nor a shared address for ever).
    forget_after_s: float = 24 * 3600.0

    def duration(self, failures: int) -> float:
        excess = failures - self.threshold
        return 0.0 if excess < 0 else min(self.base_s * (2**excess), self.max_s)


@dataclass
class _Counter:
    failures: int = 0
    last_failure_at: float = 0.0

    def locked_until(self, policy: LockoutPolicy) -> float:
        """Computed when asked, so a changed policy applies to counts already replayed."""
        duration = policy.duration(self.failures)
        return self.last_failure_at + duration if duration > 0 else 0.0


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
    clock: Callable[[], float] = time  # wall clock: event times are wall clock
    _accounts: dict[str, _Counter] = field(default_factory=dict)
    _sources: dict[str, _Counter] = field(default_factory=dict)

    def check(self, username: str, source: str) -> Locked | None:
        """Refuse before the password is even checked while either counter is locked."""
        now = self.clock()
        for scope, book, key, policy in self._scopes(username, source):
            counter = book.get(key)
            if counter is not None and (until := counter.locked_until(policy)) > now:
                return Locked(scope, until - now)
        return None

    def record_failure(self, username: str, source: str, *, at: float | None = None) -> Locked | None:
        """Count a failure that happened `at` (default now); returns the lockout it starts, if any."""
        now = self.clock() if at is None else at
        started: Locked | None = None
        for scope, book, key, policy in self._scopes(username, source):
            counter = book.setdefault(key, _Counter())
            if now - counter.last_failure_at > policy.forget_after_s:
                counter.failures = 0
            counter.failures += 1
            counter.last_failure_at = max(counter.last_failure_at, now)
            if (duration := policy.duration(counter.failures)) > 0 and (
                started is None or duration > started.retry_after_s
            ):
                started = Locked(scope, duration)
        return started

    def _scopes(self, username: str, source: str) -> tuple[tuple[str, dict[str, _Counter], str, LockoutPolicy], ...]:
        return (
            ("account", self._accounts, username, self.account_policy),
            ("source", self._sources, source, self.source_policy),
        )

    def has_failures(self, username: str) -> bool:
        return username in self._accounts

    def record_success(self, username: str) -> None:
        """Only the account's counter resets: one good password must not clear a source that
        is guessing at many accounts."""
        self._accounts.pop(username, None)
