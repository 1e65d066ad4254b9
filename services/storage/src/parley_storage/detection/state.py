"""Every rule's state, and forgetting what no rule can use any more."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from parley_storage.detection.bursts import BURST_RULES, BurstRule
from parley_storage.detection.shapes import Rate, SessionUse
from parley_storage.detection.vocabulary import Anomaly, DetectionSettings

SWEEP_EVERY = 10_000  # observations between two sweeps of the state


@dataclass
class RuleState:
    """Every rule's state, which the rules' modules share."""

    settings: DetectionSettings = field(default_factory=DetectionSettings)
    _sources: dict[str, set[str]] = field(default_factory=dict)
    _fresh: dict[str, list[tuple[float, str, str, str]]] = field(default_factory=dict)
    # Sensitive changes read from a stream beside AUTH (a data export on STORE) that no fresh login
    # explained yet: the login may be read after them. user id -> [(at, what, event id)]
    _unexplained: dict[str, list[tuple[float, str, str]]] = field(default_factory=dict)
    _sessions: dict[str, SessionUse] = field(default_factory=dict)
    _rates: dict[str, Rate] = field(default_factory=dict)
    _channel_rates: dict[str, Rate] = field(default_factory=dict)
    # (channel id, sender id) -> (bucket, the sender's messages in that channel in it)
    _in_channel: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    _planned: dict[str, tuple[float, str, str]] = field(default_factory=dict)
    _registered: dict[str, tuple[float, str]] = field(default_factory=dict)  # user id -> (at, event id)
    # Approvals by an actor whose registration this detector has not read yet (AUTH and PATCH are
    # read side by side): judged when it arrives. actor -> [(at, rollout id, event id)]
    _unjudged_approvals: dict[str, list[tuple[float, str, str]]] = field(default_factory=dict)
    _direct: dict[str, frozenset[str]] = field(default_factory=dict)  # direct channel -> its members
    _synthetic: set[str] = field(default_factory=set)  # the platform's probers' user ids
    # Behaviour findings about accounts whose registration was not read yet: user id -> findings.
    _unjudged_behaviour: dict[str, list[Anomaly]] = field(default_factory=dict)
    _seen: int = 0

    def __post_init__(self) -> None:
        self._bursts = {rule.kind: rule.counter(self.settings) for rule in BURST_RULES}

    def _burst(self, rule: BurstRule, key: str, *, at: float, items: Iterable[str], event_id: str) -> Anomaly | None:
        """Counts an event touching `items` for `key` in `rule`'s window: the finding, if it fired."""
        counter = self._bursts[rule.kind]
        burst = None
        for item in items:
            burst = counter.add(key, at=at, item=item, event_id=event_id) or burst
        return None if burst is None else rule.finding(key, burst, counter, at=at)

    def _tick(self, at: float) -> None:
        """Every SWEEP_EVERY observations, forget what no rule can use any more (idle sessions,
        empty windows, stale fresh logins), so the state follows the active accounts, not the
        log's whole history. Which sources an account used is kept: that is the baseline."""
        self._seen += 1
        if self._seen % SWEEP_EVERY:
            return
        s = self.settings
        for session_id in [k for k, use in self._sessions.items() if at - use.at >= s.two_sources_window_s]:
            del self._sessions[session_id]
        for counter in self._bursts.values():
            counter.sweep(at)
        bucket = int(at // s.rate_bucket_s)
        for pair in [p for p, (counted, _) in self._in_channel.items() if counted < bucket]:
            del self._in_channel[pair]
        for actor in [a for a, pending in self._unjudged_approvals.items() if pending[-1][0] < at - 86400]:
            del self._unjudged_approvals[actor]  # not a registered account (the platform identity)
        for user_id in [u for u, held in self._unjudged_behaviour.items() if held[-1].at < at - 86400]:
            del self._unjudged_behaviour[user_id]  # a registration gone from AUTH (an erased account)
        for user_id in [
            u for u, fresh in self._fresh.items() if not fresh or at - fresh[-1][0] > s.new_source_window_s
        ]:
            del self._fresh[user_id]
        for user_id in [
            u for u, changes in self._unexplained.items() if not changes or at - changes[-1][0] > s.new_source_window_s
        ]:
            del self._unexplained[user_id]
