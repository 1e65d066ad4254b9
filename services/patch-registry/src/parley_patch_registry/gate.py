"""A roll-out step's health gate: the calls a new instance served over its analysis window,
against the stable instances' over the same window, judged by a policy. Pure: the figures come
from heartbeats (fleet_view.py), the verdict becomes an event (rollout.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from parley_core.errors import InvalidArgument


@dataclass(frozen=True)
class GatePolicy:
    max_error_rate: float = 0.01
    max_p99_latency_ms: float = 500.0
    # Evidence: no verdict of "passed" on fewer calls than this; too few by the gate's timeout fails.
    min_requests: int = 20
    # Against the stable instances over the same window (when they served min_requests too):
    # the canary's p99 may be at most this many times theirs, or this many ms above it.
    max_p99_vs_stable: float = 2.0
    p99_slack_ms: float = 100.0


@dataclass(frozen=True)
class CallFigures:
    """Unary calls served over a window, as heartbeats counted them."""

    calls: int = 0
    errors: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0


@dataclass(frozen=True)
class InstanceWindow:
    """What the new instance reported over the analysis window, and the stable instances over the same window."""

    instance_id: str
    serving: bool
    reporting: bool  # heartbeats arrive
    window_s: float = 0.0
    canary: CallFigures = CallFigures()
    stable: CallFigures = CallFigures()


def judge(
    window: InstanceWindow, policy: GatePolicy, *, final: bool = True, settled: bool = True
) -> tuple[str, ...] | None:
    """Reasons the instance fails the gate; empty means it passes; None means wait for more.

    Never a pass on too little evidence: below `min_requests` calls the verdict waits, unless the
    gate's time is up (`final`), when it fails. Before the window ran its length (`settled`) only
    a failure is a verdict: unhealthy, or more errors than even the whole minimum of calls may
    hold. Latency is judged over the whole window on `min_requests` calls (or whatever came by
    `final`): one slow first call of a fresh instance is not its p99.
    """
    reasons = []
    canary, stable = window.canary, window.stable
    if not window.reporting:
        reasons.append("stopped reporting heartbeats")
    if not window.serving:
        reasons.append("gRPC health is not SERVING")
    if canary.errors > policy.max_error_rate * max(canary.calls, policy.min_requests):
        reasons.append(
            f"error rate {canary.error_rate:.1%} ({canary.errors} of {canary.calls} calls) "
            f"> {policy.max_error_rate:.1%}"
        )
    if (settled and canary.calls >= policy.min_requests) or final:
        if canary.p99_ms > policy.max_p99_latency_ms:
            reasons.append(f"p99 latency {canary.p99_ms:.0f} ms > {policy.max_p99_latency_ms:.0f} ms")
        elif stable.calls >= policy.min_requests and canary.calls >= policy.min_requests:
            allowed = max(stable.p99_ms * policy.max_p99_vs_stable, stable.p99_ms + policy.p99_slack_ms)
            if canary.p99_ms > allowed:
                reasons.append(
                    f"p99 latency {canary.p99_ms:.0f} ms > {allowed:.0f} ms allowed against the stable "
                    f"instances' {stable.p99_ms:.0f} ms"
                )
    if reasons:
        return tuple(reasons)
    if not (settled or final):
        return None
    if canary.calls < policy.min_requests:
        if not final:
            return None
        return (
            f"too little evidence: {canary.calls} calls in {window.window_s:.0f} s, "
            f"the gate needs {policy.min_requests}",
        )
    return ()


# The new instance's share of new connections at each gated phase of a step (as Argo Rollouts'
# setWeight steps): a broken release meets a tenth of the callers first.
DEFAULT_WEIGHTS = (10, 50, 100)


def check_weights(weights: Sequence[int]) -> None:
    if not weights or list(weights) != sorted(set(weights)) or weights[0] < 1 or weights[-1] != 100:
        raise InvalidArgument(
            f"weights {', '.join(map(str, weights)) or '(none)'}: percentages that rise and end at 100, e.g. 10,50,100"
        )
