"""A gate verdict reaches clients with its figures as numbers (AuditEntry.gate), for the
console's charts; other audit entries carry none."""

from __future__ import annotations

from parley_patch_registry.api import audit_entry_proto
from parley_patch_registry.rollout_events import GateEvaluated, RolloutApproved


def test_a_gate_verdict_carries_its_figures() -> None:
    verdict = GateEvaluated(
        rollout_id="r-1",
        at=10.5,
        actor="registry",
        step=0,
        passed=False,
        reasons=("error rate 50.0%",),
        window_s=3.2,
        canary_calls=100,
        canary_errors=50,
        canary_p99_ms=41.0,
        stable_calls=200,
        stable_errors=1,
        stable_p99_ms=12.0,
        weight=10,
    )
    entry = audit_entry_proto(verdict)
    assert (entry.event, entry.actor, entry.at) == ("GateEvaluated", "registry", 10.5)
    assert entry.HasField("gate")
    gate = entry.gate
    assert (gate.step, gate.weight, gate.passed) == (0, 10, False)
    assert (gate.canary_calls, gate.canary_errors, gate.canary_p99_ms) == (100, 50, 41.0)
    assert (gate.stable_calls, gate.stable_errors, gate.stable_p99_ms) == (200, 1, 12.0)
    assert abs(gate.window_s - 3.2) < 1e-9
    assert (gate.rollout_id, list(gate.reasons)) == ("r-1", ["error rate 50.0%"])  # the event itself
    assert "canary 100 calls, 50 errors" in entry.detail


def test_other_entries_carry_no_figures() -> None:
    entry = audit_entry_proto(RolloutApproved(rollout_id="r-1", at=1.0, actor="bob"))
    assert not entry.HasField("gate")
