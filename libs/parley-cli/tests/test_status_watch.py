"""`parley patch status --watch` shows each step's share and every gate verdict with its figures,
not only changes of state, instance, gate or drain (the 10 % and 50 % verdicts were skipped)."""

from __future__ import annotations

import pytest
from parley.patch.v1 import patch_pb2

from parley_cli.rollout_view import StatusWatch


def _rollout(weight: int, verdicts: list[str]) -> patch_pb2.Rollout:
    return patch_pb2.Rollout(
        rollout_id="r-1",
        service="messaging",
        state="rolling",
        weights=[10, 50, 100],
        old_instances=["m-1"],
        steps=[patch_pb2.RolloutStep(replaces_instance="m-1", new_instance="m-2", gate="pending", weight=weight)],
        audit=[patch_pb2.AuditEntry(at=1.0 + i, event="GateEvaluated", detail=d) for i, d in enumerate(verdicts)],
    )


def _watched(watch: StatusWatch, rollout: patch_pb2.Rollout) -> None:
    if watch.changed(rollout):
        watch.show(rollout, {})


def test_watch_prints_every_verdict_and_share(capsys: pytest.CaptureFixture[str]) -> None:
    ten = "step 0 at 10% passed (over 2.0 s: canary 40 calls, 0 errors)"
    fifty = "step 0 at 50% passed (over 2.0 s: canary 200 calls, 0 errors)"
    hundred = "step 0 at 100% passed (over 2.0 s: canary 400 calls, 0 errors)"
    watch = StatusWatch()
    _watched(watch, _rollout(10, []))
    first = capsys.readouterr().out
    assert "10%" in first
    assert "gate at" not in first
    _watched(watch, _rollout(10, []))  # nothing new: nothing printed
    assert capsys.readouterr().out == ""
    _watched(watch, _rollout(50, [ten]))
    out = capsys.readouterr().out
    assert ten in out
    assert "50%" in out
    # Two verdicts between polls: both are shown, the earlier one too, each once.
    _watched(watch, _rollout(50, [ten, fifty, hundred]))
    out = capsys.readouterr().out
    assert fifty in out
    assert hundred in out
    assert ten not in out
