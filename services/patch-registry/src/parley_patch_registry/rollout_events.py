"""A roll-out's events (past tense), and how the audit describes each: what a reader needs
beyond its name and actor. Pure data: the state machine that decides them is rollout.py."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from parley_patch_registry.gate import CallFigures, InstanceWindow


@dataclass(frozen=True)
class RolloutEvent:
    rollout_id: str
    at: float  # unix seconds
    actor: str  # user id, "registry" for automatic decisions, "node-agent@<host>" for what an agent did


@dataclass(frozen=True)
class RolloutPlanned(RolloutEvent):
    service: str
    from_version: str
    to_version: str
    target_path: str
    old_instances: tuple[str, ...]
    release_published_by: str
    reverts: str = ""  # the finished roll-out this one undoes
    forced: bool = False  # over a canary this release failed before
    reason: str = ""
    weights: tuple[int, ...] = ()  # the new instance's share per gated phase; () is (100,), one phase


@dataclass(frozen=True)
class RolloutApproved(RolloutEvent):
    pass


@dataclass(frozen=True)
class StepStarted(RolloutEvent):
    step: int  # 0 is the canary
    replaces_instance: str


@dataclass(frozen=True)
class InstanceStarted(RolloutEvent):
    step: int
    instance_id: str
    version: str


@dataclass(frozen=True)
class GateEvaluated(RolloutEvent):
    """The verdict and the evidence it rests on (see InstanceWindow)."""

    step: int
    passed: bool
    reasons: tuple[str, ...]
    window_s: float = 0.0
    canary_calls: int = 0
    canary_errors: int = 0
    canary_p50_ms: float = 0.0
    canary_p99_ms: float = 0.0
    stable_calls: int = 0
    stable_errors: int = 0
    stable_p50_ms: float = 0.0
    stable_p99_ms: float = 0.0
    weight: int = 100  # the phase judged; a pass below 100 raises the share, at 100 completes the step

    @classmethod
    def of_window(
        cls, window: InstanceWindow, reasons: tuple[str, ...], *, rollout_id: str, at: float, step: int, weight: int
    ) -> GateEvaluated:
        """The registry's verdict on `window`, with the figures it rests on."""
        return cls(
            rollout_id=rollout_id,
            at=at,
            actor="registry",
            step=step,
            passed=not reasons,
            reasons=reasons,
            window_s=window.window_s,
            weight=weight,
            **_flat("canary", window.canary),
            **_flat("stable", window.stable),
        )

    def figures(self) -> str:
        """One line for the audit: what the verdict saw."""
        canary = _figures("canary", self.canary_calls, self.canary_errors, self.canary_p50_ms, self.canary_p99_ms)
        stable = _figures("stable", self.stable_calls, self.stable_errors, self.stable_p50_ms, self.stable_p99_ms)
        return f"over {self.window_s:.1f} s: {canary}; {stable if self.stable_calls else 'no stable calls to compare'}"


def _flat(who: str, figures: CallFigures) -> dict[str, Any]:
    """`figures` as the event's flat fields: `canary_calls=...` and so on."""
    return {f"{who}_{name}": value for name, value in asdict(figures).items()}


def _figures(who: str, calls: int, errors: int, p50_ms: float, p99_ms: float) -> str:
    return f"{who} {calls} calls, {errors} errors, p50 {p50_ms:.0f} ms, p99 {p99_ms:.0f} ms"


@dataclass(frozen=True)
class InstanceExited(RolloutEvent):
    """The step's new instance ended on its own; its agent saw the exit at once."""

    step: int
    instance_id: str
    exit_code: int
    last_log_lines: tuple[str, ...]


@dataclass(frozen=True)
class InstanceDrained(RolloutEvent):
    step: int
    instance_id: str


@dataclass(frozen=True)
class RolloutPaused(RolloutEvent):
    reason: str


@dataclass(frozen=True)
class RolloutResumed(RolloutEvent):
    pass


@dataclass(frozen=True)
class RollbackStarted(RolloutEvent):
    reason: str
    automatic: bool


@dataclass(frozen=True)
class RolloutCompleted(RolloutEvent):
    pass


@dataclass(frozen=True)
class RolloutRolledBack(RolloutEvent):
    pass


def exit_description(exit_code: int) -> str:
    return f"killed by signal {-exit_code}" if exit_code < 0 else f"exited with code {exit_code}"


def describe(event: RolloutEvent) -> str:
    """The audit's detail of an event: what a reader needs beyond its name and actor."""
    if isinstance(event, GateEvaluated):
        verdict = "passed" if event.passed else "failed: " + "; ".join(event.reasons)
        return f"step {event.step} at {event.weight}% {verdict} ({event.figures()})"
    if isinstance(event, InstanceExited):
        return f"{event.instance_id} {exit_description(event.exit_code)}"
    if isinstance(event, RolloutPlanned):
        parts = [f"{event.from_version or '?'} -> {event.to_version}"]
        parts += [f"reverts {event.reverts}"] if event.reverts else []
        parts += ["FORCED over a failed canary"] if event.forced else []
        parts += [f"reason: {event.reason}"] if event.reason else []
        parts += [f"weights {'/'.join(map(str, event.weights))}%"] if event.weights else []
        return "; ".join(parts)
    for name in ("reason", "instance_id", "replaces_instance", "to_version"):
        value = getattr(event, name, "")
        if value:
            return f"{name}={value}"
    return ""
