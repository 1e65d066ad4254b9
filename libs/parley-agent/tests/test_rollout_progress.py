"""What `parley up` prints about a roll-out: one line per step, verdict and state, in order."""

from __future__ import annotations

from parley.patch.v1 import patch_pb2

from parley_agent.node_agent import rollout_progress


def test_progress_names_each_step_and_verdict_with_its_figures() -> None:
    rollout = patch_pb2.Rollout(
        rollout_id="r1",
        service="messaging",
        from_version="0.1.0",
        to_version="0.2.0",
        planned_by="olga",
        approved_by="oscar",
        state="rolled_back",
        rollback_reason="canary failed its gate: error rate 100.0%",
        steps=[patch_pb2.RolloutStep(replaces_instance="m-1", new_instance="m-2", gate="failed")],
        audit=[
            patch_pb2.AuditEntry(
                event="GateEvaluated",
                detail="step 0 at 10% failed: error rate 100.0% (over 2.0 s: canary 5 calls, ...)",
            )
        ],
    )
    assert rollout_progress(rollout) == [
        "planned by olga",
        "approved by oscar",
        "canary: m-2 started beside m-1",
        "canary: gate step 0 at 10% failed: error rate 100.0% (over 2.0 s: canary 5 calls, ...)",
        "rolling back: canary failed its gate: error rate 100.0%",
        "rolled back",
    ]
