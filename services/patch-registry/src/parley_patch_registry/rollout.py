"""The roll-out of one release to one service's instances, as an event-sourced state machine.

    planned -> approved -> canary -> production -> done
                  \\           \\          \\
                   `-----------`----------`--> rolling_back -> rolled_back
    (paused / resumed from approved, canary or production)

Every transition is an event, so the audit trail *is* the state. Each step replaces one old
instance: the new instance is started first and must be healthy before the old one is drained,
so there are never fewer healthy instances than before (surge of one, then drain). The first
step is the canary; a failed health gate rolls back automatically. Pure: no clock, no I/O; the
caller passes `at` and the identity of whoever acts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from parley_core.errors import FailedPrecondition, InvalidArgument
from parley_patch_registry.four_eyes import approval_counts, require_other_approver
from parley_patch_registry.gate import DEFAULT_WEIGHTS, GatePolicy, InstanceWindow, check_weights, judge
from parley_patch_registry.patch_roles import require_patch_role
from parley_patch_registry.rollout_events import (
    GateEvaluated,
    InstanceDrained,
    InstanceExited,
    InstanceStarted,
    RollbackStarted,
    RolloutApproved,
    RolloutCompleted,
    RolloutEvent,
    RolloutPaused,
    RolloutPlanned,
    RolloutResumed,
    RolloutRolledBack,
    StepStarted,
    exit_description,
)

# Every state a planned roll-out can be in (Rollout.apply), in the order it moves through them.
STATES = ("planned", "approved", "canary", "production", "paused", "rolling_back", "done", "rolled_back")


# ---- aggregate -------------------------------------------------------------------------------


@dataclass
class Step:
    replaces_instance: str
    new_instance: str = ""
    gate_passed: bool | None = None
    drained: bool = False
    exit_code: int | None = None
    last_log_lines: tuple[str, ...] = ()
    phase: int = 0  # index into the roll-out's weights


@dataclass
class Rollout:
    rollout_id: str = ""
    service: str = ""
    from_version: str = ""
    to_version: str = ""
    target_path: str = ""
    planned_by: str = ""
    release_published_by: str = ""
    approved_by: str = ""
    state: str = "new"
    paused_from: str = ""
    old_instances: tuple[str, ...] = ()
    steps: list[Step] = field(default_factory=list)
    rollback_reason: str = ""
    reverts: str = ""
    forced: bool = False
    reason: str = ""
    weights: tuple[int, ...] = (100,)
    history: list[RolloutEvent] = field(default_factory=list)

    # -- replay --

    @classmethod
    def replay(cls, events: Sequence[RolloutEvent]) -> Rollout:
        rollout = cls()
        for event in events:
            rollout.apply(event)
        return rollout

    def apply(self, event: RolloutEvent) -> None:
        self.history.append(event)
        match event:
            case RolloutPlanned():
                self.rollout_id, self.service = event.rollout_id, event.service
                self.from_version, self.to_version = event.from_version, event.to_version
                self.target_path, self.old_instances = event.target_path, event.old_instances
                self.planned_by, self.state = event.actor, "planned"
                self.release_published_by = event.release_published_by
                self.reverts, self.forced, self.reason = event.reverts, event.forced, event.reason
                self.weights = tuple(event.weights) or (100,)
            case RolloutApproved():
                if approval_counts(
                    event.actor,
                    rollout_id=self.rollout_id,
                    state=self.state,
                    planned_by=self.planned_by,
                    release_published_by=self.release_published_by,
                ):
                    self.approved_by, self.state = event.actor, "approved"
            case StepStarted():
                self.steps.append(Step(replaces_instance=event.replaces_instance))
                self.state = "canary" if event.step == 0 else "production"
            case InstanceStarted():
                self.steps[event.step].new_instance = event.instance_id
            case GateEvaluated():
                step = self.steps[event.step]
                if event.passed and event.weight < 100:
                    step.phase += 1  # the next, larger share, gated again
                else:
                    step.gate_passed = event.passed
            case InstanceExited():
                step = self.steps[event.step]
                step.new_instance = step.new_instance or event.instance_id
                step.exit_code, step.last_log_lines = event.exit_code, event.last_log_lines
            case InstanceDrained():
                self.steps[event.step].drained = True
            case RolloutPaused():
                self.paused_from, self.state = self.state, "paused"
            case RolloutResumed():
                self.state, self.paused_from = self.paused_from, ""
            case RollbackStarted():
                self.state, self.rollback_reason = "rolling_back", event.reason
            case RolloutCompleted():
                self.state = "done"
            case RolloutRolledBack():
                self.state = "rolled_back"

    def _record(self, kind: type[RolloutEvent], *, at: float, actor: str, **facts: Any) -> list[RolloutEvent]:
        """An event of this roll-out, applied: every one names the roll-out, when and who."""
        return self._emit(kind(rollout_id=self.rollout_id, at=at, actor=actor, **facts))

    def _emit(self, event: RolloutEvent) -> list[RolloutEvent]:
        self.apply(event)
        return [event]

    def _require(self, *states: str) -> None:
        if self.state not in states:
            raise FailedPrecondition(
                f"roll-out {self.rollout_id} is {self.state}; this needs it to be {' or '.join(states)}"
            )

    @property
    def current_step(self) -> int:
        return len(self.steps) - 1

    @property
    def finished(self) -> bool:
        return self.state in ("done", "rolled_back")

    # -- commands --

    @staticmethod
    def plan(
        *,
        rollout_id: str,
        service: str,
        from_version: str,
        to_version: str,
        target_path: str,
        old_instances: Sequence[str],
        release_published_by: str,
        actor: str,
        actor_role: str,
        at: float,
        failed_before: Sequence[str] = (),
        force: bool = False,
        reason: str = "",
        reverts: str = "",
        weights: Sequence[int] = DEFAULT_WEIGHTS,
    ) -> tuple[Rollout, list[RolloutEvent]]:
        """`failed_before`: why earlier canaries of this release failed; such a release goes out
        again only with `force` and a reason, both in the audit."""
        require_patch_role(actor_role, "planning a roll-out")
        if not old_instances:
            raise FailedPrecondition(f"no running instance of {service} to upgrade")
        if from_version == to_version:
            raise FailedPrecondition(f"{service} already runs {to_version}")
        if failed_before and not force:
            raise FailedPrecondition(
                f"{service} {to_version} failed a canary before ({failed_before[-1]}); "
                "roll it out again only with --force and a --reason"
            )
        if force and not reason.strip():
            raise InvalidArgument("--force needs a --reason, recorded in the audit")
        check_weights(weights)
        rollout = Rollout()
        event = RolloutPlanned(
            rollout_id=rollout_id,
            at=at,
            actor=actor,
            service=service,
            from_version=from_version,
            to_version=to_version,
            target_path=target_path,
            old_instances=tuple(old_instances),
            release_published_by=release_published_by,
            reverts=reverts,
            forced=bool(failed_before) and force,
            reason=reason.strip(),
            weights=tuple(weights),
        )
        return rollout, rollout._emit(event)

    def approve(self, *, actor: str, actor_role: str, at: float) -> list[RolloutEvent]:
        """Four eyes: the patch-approve permission, and not the person who planned it."""
        require_patch_role(actor_role, "approving a roll-out", permission="patch-approve")
        require_other_approver(actor, planned_by=self.planned_by, release_published_by=self.release_published_by)
        self._require("planned")
        return self._record(RolloutApproved, at=at, actor=actor)

    def next_step(self, *, at: float) -> list[RolloutEvent]:
        """Starts the canary, or the next production step once the previous one is complete."""
        self._require("approved", "canary", "production")
        if self.steps:
            last = self.steps[-1]
            if not (last.gate_passed and last.drained):
                raise FailedPrecondition(f"step {self.current_step} is not complete yet")
        remaining = [i for i in self.old_instances if i not in {s.replaces_instance for s in self.steps}]
        if not remaining:
            return self._record(RolloutCompleted, at=at, actor="registry")
        return self._record(StepStarted, at=at, actor="registry", step=len(self.steps), replaces_instance=remaining[0])

    def instance_started(
        self, *, instance_id: str, version: str, at: float, actor: str = "node-agent"
    ) -> list[RolloutEvent]:
        self._require("canary", "production", "paused")
        if version != self.to_version:
            raise InvalidArgument(f"instance {instance_id} runs {version}, the roll-out installs {self.to_version}")
        # A step starts one new instance: a report again is a retry (nothing new), another instance
        # is refused, so no report replaces the instance being gated or grows the history.
        if not self.steps:
            raise FailedPrecondition(f"roll-out {self.rollout_id} has started no step yet")
        if started := self.steps[self.current_step].new_instance:
            if started == instance_id:
                return []
            raise FailedPrecondition(f"step {self.current_step} started {started} already, not {instance_id}")
        return self._record(
            InstanceStarted, at=at, actor=actor, step=self.current_step, instance_id=instance_id, version=version
        )

    def gate(
        self, window: InstanceWindow, policy: GatePolicy, *, at: float, final: bool = True, settled: bool = True
    ) -> list[RolloutEvent]:
        """Judges the new instance of the current step; a failure rolls back at once.

        No events while the evidence is too thin and the gate's time is not up (see `judge`).
        """
        self._require("canary", "production", "paused")
        step = self.steps[self.current_step]
        if window.instance_id != step.new_instance:
            raise InvalidArgument(f"step {self.current_step} gates {step.new_instance or 'no instance yet'}")
        reasons = judge(window, policy, final=final, settled=settled)
        if reasons is None:
            return []
        events = self._emit(
            GateEvaluated.of_window(
                window, reasons, rollout_id=self.rollout_id, at=at, step=self.current_step, weight=self.current_weight
            )
        )
        if reasons:
            where = "canary" if self.current_step == 0 else f"step {self.current_step}"
            events += self._record(
                RollbackStarted,
                at=at,
                actor="registry",
                reason=f"{where} failed its gate: " + "; ".join(reasons),
                automatic=True,
            )
        return events

    def drained(self, *, instance_id: str, at: float, actor: str = "node-agent") -> list[RolloutEvent]:
        """Never fewer healthy instances than before: the old one goes only after its successor passed."""
        self._require("canary", "production", "paused")
        step = self.steps[self.current_step]
        if instance_id != step.replaces_instance:
            raise InvalidArgument(f"step {self.current_step} replaces {step.replaces_instance}, not {instance_id}")
        if not step.gate_passed:
            raise FailedPrecondition(f"{instance_id} cannot be drained before its successor passed the health gate")
        if step.drained:
            return []  # a report again, until the next step starts: nothing new
        return self._record(InstanceDrained, at=at, actor=actor, step=self.current_step, instance_id=instance_id)

    def pause(self, *, actor: str, actor_role: str, reason: str, at: float) -> list[RolloutEvent]:
        require_patch_role(actor_role, "pausing a roll-out")
        self._require("approved", "canary", "production")
        return self._record(RolloutPaused, at=at, actor=actor, reason=reason)

    def resume(self, *, actor: str, actor_role: str, at: float) -> list[RolloutEvent]:
        require_patch_role(actor_role, "resuming a roll-out")
        self._require("paused")
        return self._record(RolloutResumed, at=at, actor=actor)

    def rollback(self, *, actor: str, actor_role: str, reason: str, at: float) -> list[RolloutEvent]:
        require_patch_role(actor_role, "rolling back a roll-out")
        self._require("planned", "approved", "canary", "production", "paused")
        return self._record(RollbackStarted, at=at, actor=actor, reason=reason or "by operator", automatic=False)

    def rolled_back(self, *, at: float, actor: str = "node-agent") -> list[RolloutEvent]:
        """The agent restored the old version on every replaced instance."""
        self._require("rolling_back")
        return self._record(RolloutRolledBack, at=at, actor=actor)

    def instance_exited(
        self, *, instance_id: str, exit_code: int, last_log_lines: Sequence[str], at: float, actor: str = "node-agent"
    ) -> list[RolloutEvent]:
        """A new instance of this roll-out ended on its own: a failed gate if it was pending, and a
        rollback at once either way (a crash is evidence enough). Nothing once rolling back."""
        if self.state in ("rolling_back", "rolled_back", "done"):
            return []
        self._require("canary", "production", "paused")
        step_index = next(
            (i for i, s in enumerate(self.steps) if s.new_instance == instance_id),
            self.current_step if self.steps and not self.steps[-1].new_instance else None,
        )
        if step_index is None:
            raise InvalidArgument(f"{instance_id} is not a new instance of roll-out {self.rollout_id}")
        lines = tuple(last_log_lines)
        events = self._record(
            InstanceExited,
            at=at,
            actor=actor,
            step=step_index,
            instance_id=instance_id,
            exit_code=exit_code,
            last_log_lines=lines,
        )
        how = exit_description(exit_code)
        last = next((line for line in reversed(lines) if line.strip()), "")
        why = f"{instance_id} {how}" + (f": {last.strip()[:300]}" if last else "")
        if self.steps[step_index].gate_passed is None:
            events += self._record(
                GateEvaluated,
                at=at,
                actor="registry",
                step=step_index,
                passed=False,
                reasons=(why,),
                weight=self.current_weight,
            )
        where = "canary" if step_index == 0 else f"step {step_index}"
        events += self._record(RollbackStarted, at=at, actor="registry", reason=f"{where}: {why}", automatic=True)
        return events

    @property
    def current_weight(self) -> int:
        """The share (percent) of new connections the current step's new instance gets now."""
        if not self.steps:
            return self.weights[0]
        step = self.steps[-1]
        return 100 if step.gate_passed else self.weights[min(step.phase, len(self.weights) - 1)]

    @property
    def failed_canary(self) -> str:
        """Why a step of this roll-out failed its gate ("" if none did)."""
        if any(step.gate_passed is False for step in self.steps):
            return self.rollback_reason or "failed its gate"
        return ""

    def upgraded_instances(self) -> list[str]:
        """New-version instances that a rollback must replace with the old version again."""
        return [s.new_instance for s in self.steps if s.new_instance]

    def snapshot(self) -> Rollout:
        return replace(self, steps=[replace(s) for s in self.steps], history=list(self.history))
