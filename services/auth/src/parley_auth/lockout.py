"""Failed-authentication counters per account-and-source pair and per source, with exponential
lockout; no I/O.

Why pairs, not accounts: a count per account alone lets anyone lock another person out from
anywhere (a stranger's wrong passwords would hold back the owner's right one, at another
address). Counted per account *and* client address, a guesser locks only his own tries at that
account; a separate, higher threshold per address stops one address guessing across many
accounts. The address is the client's real one: gateway instances listen on the client port
themselves (no proxy in between, see parley_agent.shared_port), so the gateway sees it.

Why also a backstop per account over every address: the address is the gateway's word, so a
holder of the gateway's certificate (or a guesser with many addresses) can claim a fresh one per
try and never reach a pair's threshold. Past a much higher count at one account from any
addresses, the account's logins wait a short cool-down, whatever address they claim: guessing
is bounded per account, and the owner waits minutes at worst, never a day.

A failure is a wrong password or second factor at login, and the same at a step-up check (the
current password to ChangePassword, a code to ConfirmTotpEnrolment or RegenerateRecoveryCodes):
a stolen session buys no free guesses. Counters are keyed by the normalized username whether
or not such an account exists, so a lockout reveals nothing about which names are real. The
book is a projection of the LoginFailureCounted / LoginFailuresCleared events on the AUTH stream,
fed with each event's own time, so every auth instance (and a restarted one) computes the same
lockouts. The clock that decides whether a lockout is still running is a parameter so tests can
release it without waiting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
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

    def count(self, at: float, policy: LockoutPolicy) -> float:
        """One more failure at `at`; returns the lockout it makes (0: none)."""
        if at - self.last_failure_at > policy.forget_after_s:
            self.failures = 0
        self.failures += 1
        self.last_failure_at = max(self.last_failure_at, at)
        return policy.duration(self.failures)


def _drop_forgotten(counters: dict[str, _Counter], now: float, policy: LockoutPolicy) -> None:
    for key in [k for k, counter in counters.items() if now - counter.last_failure_at > policy.forget_after_s]:
        del counters[key]


class Scope(StrEnum):
    PAIR = "pair"  # this account from this address
    ACCOUNT = "account"  # this account from every address (the backstop)
    SOURCE = "source"  # every account from this address
    SLOWED = "slowed"  # every account from this address, on the anomaly detector's word


@dataclass(frozen=True)
class Locked:
    scope: Scope
    retry_after_s: float
    source: str = ""  # the address as the platform records it (budget_key), named to the person refused

    @property
    def message(self) -> str:
        wait = f"try again in {int(self.retry_after_s) + 1} s"
        yours = f"your address ({self.source})" if self.source else "your address"
        if self.scope is Scope.PAIR:
            return f"too many failed attempts at this account from {yours}; {wait}"
        if self.scope is Scope.ACCOUNT:
            minutes = int(self.retry_after_s // 60) + 1
            return (
                "too many failed logins for this account from many addresses; "
                f"try again in {minutes} minute{'s' if minutes > 1 else ''}"
            )
        if self.scope is Scope.SLOWED:
            # A shared office address slowed by colleagues' typos need not wait: say who can end it, and how.
            lift = f"`parley admin lift-slowdown {self.source or 'ADDRESS'}`"
            return (
                f"logins from {yours} are held back after suspicious activity; {wait}, "
                f"or ask an administrator to lift it with {lift}"
            )
        return f"too many failed attempts from {yours}; {wait}"


# The backstop's defaults (AuthSettings): past 50 failures at one account from any addresses, each
# further one holds its logins back 5 minutes; the count starts again after an hour without one.
# A guesser gets 50 tries, then 12 an hour, whatever addresses he claims.
ACCOUNT_BACKSTOP = LockoutPolicy(threshold=50, base_s=300.0, max_s=300.0, forget_after_s=3600.0)

# Every this many failures counted, counts past their policy's forget-after time are dropped: they
# would start again from zero anyway, and an attacker spraying names from many addresses must not
# grow the book for ever.
SWEEP_EVERY = 4096


@dataclass
class LockoutBook:
    """The policies come from AuthSettings (PARLEY_AUTH_LOCKOUT_*)."""

    pair_policy: LockoutPolicy
    source_policy: LockoutPolicy
    account_policy: LockoutPolicy = ACCOUNT_BACKSTOP
    clock: Callable[[], float] = time  # wall clock: event times are wall clock
    # account key -> source -> counter
    _pairs: dict[str, dict[str, _Counter]] = field(default_factory=dict)
    _sources: dict[str, _Counter] = field(default_factory=dict)
    _accounts: dict[str, _Counter] = field(default_factory=dict)  # account key -> every address
    _slowed: dict[str, float] = field(default_factory=dict)  # source -> until (SourceSlowed)
    _lifted: dict[str, float] = field(default_factory=dict)  # source -> the until lifted (SourceSlowdownLifted)
    _since_sweep: int = 0

    def slow(self, source: str, until: float) -> None:
        """The detector's slow-the-source response (SourceSlowed): refused until then; a slow-down
        an administrator lifted is not put back by the same fact read again."""
        if until <= self._lifted.get(source, 0.0):
            return
        self._slowed[source] = max(until, self._slowed.get(source, 0.0))

    def lift(self, source: str, until: float) -> None:
        """An administrator ended the slow-down (SourceSlowdownLifted) that would last until `until`."""
        if self._slowed.get(source, 0.0) <= until:
            self._slowed.pop(source, None)
        self._lifted[source] = max(until, self._lifted.get(source, 0.0))

    def slowed_until(self, source: str) -> float:
        """When the slow-down of `source` ends; 0 when it is not slowed, or it was lifted."""
        return self._slowed.get(source, 0.0)

    def slow_down_answered(self, source: str, until: float) -> bool:
        """A slow-down to `until` was carried out already, or lifted by an administrator."""
        return until <= max(self._slowed.get(source, 0.0), self._lifted.get(source, 0.0))

    def slowed_now(self) -> dict[str, float]:
        now = self.clock()
        return {source: until for source, until in self._slowed.items() if until > now}

    def check(self, username: str, source: str) -> Locked | None:
        """Refuse before the password (or code) is even checked while either counter is locked."""
        now = self.clock()
        for scope, counter, policy in self._counters(username, source):
            if counter is not None and (until := counter.locked_until(policy)) > now:
                return Locked(scope, until - now, source)
        if (slowed := self._slowed.get(source, 0.0)) > now:
            return Locked(Scope.SLOWED, slowed - now, source)
        return None

    def would_lock(self, username: str, source: str, *, at: float | None = None) -> Locked | None:
        """The lockout one more failure `at` (default now) would start, without counting it (auth
        records a lockout before it appends the failure that starts it)."""
        now = self.clock() if at is None else at
        started: Locked | None = None
        for scope, counter, policy in self._counters(username, source):
            trial = replace(counter) if counter is not None else _Counter()
            if (duration := trial.count(now, policy)) > 0 and (started is None or duration > started.retry_after_s):
                started = Locked(scope, duration, source)
        return started

    def record_failure(self, username: str, source: str, *, at: float | None = None) -> Locked | None:
        """Count a failure that happened `at` (default now); returns the lockout it starts, if any."""
        now = self.clock() if at is None else at
        pair = self._pairs.setdefault(username, {}).setdefault(source, _Counter())
        source_counter = self._sources.setdefault(source, _Counter())
        account = self._accounts.setdefault(username, _Counter())
        started: Locked | None = None
        for scope, counter, policy in (
            (Scope.PAIR, pair, self.pair_policy),
            (Scope.SOURCE, source_counter, self.source_policy),
            (Scope.ACCOUNT, account, self.account_policy),
        ):
            if (duration := counter.count(now, policy)) > 0 and (started is None or duration > started.retry_after_s):
                started = Locked(scope, duration, source)
        self._since_sweep += 1
        if self._since_sweep >= SWEEP_EVERY:
            self._sweep(now)
        return started

    def accounts_failed_from(self, source: str, *, since: float) -> int:
        """How many accounts (keys) failed from this address at or after `since`: the evidence
        a password-spraying response must have (anomaly_evidence.py)."""
        return sum(
            1 for by_source in self._pairs.values() if (c := by_source.get(source)) and c.last_failure_at >= since
        )

    def _sweep(self, now: float) -> None:
        self._since_sweep = 0
        for username in list(self._pairs):
            pairs = self._pairs[username]
            _drop_forgotten(pairs, now, self.pair_policy)
            if not pairs:
                del self._pairs[username]
        _drop_forgotten(self._sources, now, self.source_policy)
        _drop_forgotten(self._accounts, now, self.account_policy)
        for source in [s for s, until in self._slowed.items() if until <= now]:
            del self._slowed[source]
        for source in [s for s, until in self._lifted.items() if until <= now]:
            del self._lifted[source]  # a fact read again with that end would change nothing now

    def _counters(self, username: str, source: str) -> tuple[tuple[Scope, _Counter | None, LockoutPolicy], ...]:
        return (
            (Scope.PAIR, self._pairs.get(username, {}).get(source), self.pair_policy),
            (Scope.SOURCE, self._sources.get(source), self.source_policy),
            (Scope.ACCOUNT, self._accounts.get(username), self.account_policy),
        )

    def account_lockouts(self, username: str) -> tuple[int, float]:
        """How many addresses this account is locked out from now, and when the last lockout ends
        (the backstop, when it runs, counts as one more and may end last)."""
        now = self.clock()
        ends = [
            until for c in self._pairs.get(username, {}).values() if (until := c.locked_until(self.pair_policy)) > now
        ]
        backstop = self._accounts.get(username)
        if backstop is not None and (until := backstop.locked_until(self.account_policy)) > now:
            ends.append(until)
        return len(ends), max(ends, default=0.0)

    def account_has_failures(self, username: str) -> bool:
        return bool(self._pairs.get(username)) or username in self._accounts

    def has_failures(self, username: str, source: str) -> bool:
        return source in self._pairs.get(username, {})

    def record_success(self, username: str, source: str = "") -> None:
        """Only the pair's counter resets: a success at one address must not clear a guesser's
        count at another, nor one good password a source that guesses at many accounts. An empty
        source (an administrator's unlock, or a LoginFailuresCleared written before counts were
        per pair) clears every pair of the account and its backstop. A success leaves the backstop:
        the owner's login must not reset a guesser's count from elsewhere."""
        if not source:
            self._pairs.pop(username, None)
            self._accounts.pop(username, None)
            return
        pairs = self._pairs.get(username)
        if pairs is not None:
            pairs.pop(source, None)
            if not pairs:
                del self._pairs[username]
