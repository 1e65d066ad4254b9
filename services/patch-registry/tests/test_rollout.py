"""The roll-out state machine: approvals, canary, gates, rolling steps, pause, rollback, replay."""

from __future__ import annotations

import pytest

from parley_core.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from parley_patch_registry import codec
from parley_patch_registry.gate import DEFAULT_WEIGHTS, CallFigures, GatePolicy, InstanceWindow
from parley_patch_registry.rollout import Rollout
from parley_patch_registry.rollout_events import GateEvaluated, RollbackStarted, RolloutApproved, RolloutEvent, describe

NO_CALLS = CallFigures()
POLICY = GatePolicy(max_error_rate=0.01, max_p99_latency_ms=250.0, min_requests=20)


def planned(
    instances: tuple[str, ...] = ("m-1", "m-2"),
    weights: tuple[int, ...] = (100,),
    *,
    from_version: str = "0.1.0",
    actor_role: str = "operator",
) -> tuple[Rollout, list[RolloutEvent]]:
    """Alice's plan to roll messaging 0.2.0 (published by dave) out to `instances`."""
    return Rollout.plan(
        rollout_id="r-1",
        service="messaging",
        from_version=from_version,
        to_version="0.2.0",
        target_path="messaging/parley_messaging-0.2.0-py3-none-any.whl",
        old_instances=instances,
        release_published_by="dave",
        actor="alice",
        actor_role=actor_role,
        at=1.0,
        weights=weights,
    )


def healthy(instance: str) -> InstanceWindow:
    return window(instance, calls=200, errors=1, p99=40.0)


def window(
    instance: str = "n-1",
    *,
    calls: int,
    errors: int = 0,
    p99: float = 5.0,
    serving: bool = True,
    reporting: bool = True,
    stable: CallFigures = NO_CALLS,
) -> InstanceWindow:
    return InstanceWindow(
        instance,
        serving=serving,
        reporting=reporting,
        window_s=15.0,
        canary=CallFigures(calls=calls, errors=errors, p50_ms=p99 / 2, p99_ms=p99),
        stable=stable,
    )


def approved() -> Rollout:
    """The planned roll-out, approved by bob."""
    rollout, _ = planned()
    rollout.approve(actor="bob", actor_role="operator", at=2.0)
    return rollout


def canary_complete() -> Rollout:
    """Approved, and its canary (n-1 for m-1) passed and the old instance drained."""
    rollout = approved()
    run_step(rollout, "n-1")
    return rollout


def run_step(rollout: Rollout, new_instance: str) -> list[RolloutEvent]:
    events = rollout.next_step(at=2.0)
    events += rollout.instance_started(instance_id=new_instance, version="0.2.0", at=3.0)
    events += rollout.gate(healthy(new_instance), POLICY, at=4.0)
    events += rollout.drained(instance_id=rollout.steps[-1].replaces_instance, at=5.0)
    return events


def test_planner_cannot_approve_own_rollout() -> None:
    rollout, _ = planned()
    with pytest.raises(PermissionDenied, match="someone other than who planned it"):
        rollout.approve(actor="alice", actor_role="admin", at=2.0)
    assert rollout.state == "planned"


def test_release_publisher_cannot_approve_its_rollout() -> None:
    rollout, _ = planned()
    with pytest.raises(PermissionDenied, match="published the release"):
        rollout.approve(actor="dave", actor_role="admin", at=2.0)


# The planner, the release's publisher, each in another form an actor may be written in, and nobody.
@pytest.mark.parametrize("approver", ["alice", "dave", "user:alice", " alice", "ALICE", "user:DAVE", "", "platform"])
def test_a_replayed_approval_breaking_four_eyes_is_ignored(approver: str, caplog: pytest.LogCaptureFixture) -> None:
    """Red-team F3: patch-registry's NATS credential appends RolloutApproved straight to PATCH,
    past `approve`; every registry replaying it must still see the roll-out unapproved."""
    _, events = planned()
    forged = RolloutApproved(rollout_id=events[0].rollout_id, at=2.0, actor=approver)
    rollout = Rollout.replay([*events, forged])

    assert (rollout.state, rollout.approved_by) == ("planned", "")
    assert rollout.history[-1] is forged  # still counted: the aggregate's version is its length
    with pytest.raises(FailedPrecondition, match="is planned"):
        rollout.next_step(at=3.0)
    [line] = [r for r in caplog.records if getattr(r, "security_event", "") == "forged_rollout_approval_ignored"]
    assert line.levelname == "ERROR"
    rollout.approve(actor="bob", actor_role="admin", at=4.0)  # a real second pair of eyes still can
    assert (rollout.state, rollout.approved_by) == ("approved", "bob")


def test_approval_needs_patch_approve_permission() -> None:
    rollout, _ = planned()
    with pytest.raises(PermissionDenied, match="patch-approve"):
        rollout.approve(actor="bob", actor_role="member", at=2.0)
    # Says who holds it, so an owner does not read it as "owner needed".
    expected = "approving a roll-out needs the patch-approve permission, held by admin and operator; you are owner"
    with pytest.raises(PermissionDenied, match=f"^{expected}$"):
        rollout.approve(actor="bob", actor_role="owner", at=2.0)
    rollout.approve(actor="bob", actor_role="operator", at=2.0)
    assert (rollout.state, rollout.approved_by) == ("approved", "bob")
    with pytest.raises(FailedPrecondition, match="is approved"):
        rollout.approve(actor="carol", actor_role="admin", at=3.0)


def test_members_cannot_plan() -> None:
    with pytest.raises(PermissionDenied):
        planned(actor_role="member")


def test_nothing_starts_before_approval() -> None:
    rollout, _ = planned()
    with pytest.raises(FailedPrecondition, match="is planned"):
        rollout.next_step(at=2.0)


def test_canary_then_production_one_at_a_time_then_done() -> None:
    rollout, history = planned()
    history += rollout.approve(actor="bob", actor_role="operator", at=2.0)
    history += rollout.next_step(at=2.0)
    assert rollout.state == "canary"
    # the old instance may not go before its successor passed the gate
    with pytest.raises(FailedPrecondition, match="before its successor passed"):
        rollout.drained(instance_id="m-1", at=2.5)
    history += rollout.instance_started(instance_id="n-1", version="0.2.0", at=3.0)
    # a step starts one new instance: a report again is a retry, another instance is refused
    assert rollout.instance_started(instance_id="n-1", version="0.2.0", at=3.1) == []
    with pytest.raises(FailedPrecondition, match="started n-1 already"):
        rollout.instance_started(instance_id="n-forged", version="0.2.0", at=3.2)
    # and the next step may not start before this one is complete
    with pytest.raises(FailedPrecondition, match="not complete"):
        rollout.next_step(at=3.5)
    history += rollout.gate(healthy("n-1"), POLICY, at=4.0)
    history += rollout.drained(instance_id="m-1", at=5.0)
    assert rollout.drained(instance_id="m-1", at=5.1) == []  # reported again: nothing new
    history += run_step(rollout, "n-2")
    assert rollout.state == "production"
    history += rollout.next_step(at=9.0)
    assert rollout.state == "done"
    assert [s.replaces_instance for s in rollout.steps] == ["m-1", "m-2"]
    # every step is an audited event, and replaying them gives the same state
    assert [type(e).__name__ for e in history] == [
        "RolloutPlanned",
        "RolloutApproved",
        "StepStarted",
        "InstanceStarted",
        "GateEvaluated",
        "InstanceDrained",
        "StepStarted",
        "InstanceStarted",
        "GateEvaluated",
        "InstanceDrained",
        "RolloutCompleted",
    ]
    replayed = Rollout.replay(history)
    assert (replayed.state, replayed.approved_by, replayed.upgraded_instances()) == ("done", "bob", ["n-1", "n-2"])


@pytest.mark.parametrize(
    ("evidence", "reason"),
    [
        (window(calls=10, serving=False), "not SERVING"),
        (window(calls=10, reporting=False), "heartbeats"),
        (window(calls=100, errors=5), "error rate 5.0%"),
        (window(calls=100, p99=900), "p99 latency"),
        (window(calls=POLICY.min_requests - 1, p99=900, reporting=False), "heartbeats"),
        # Errors that even a full minimum of good calls could not dilute fail before the minimum.
        (window(calls=3, errors=3), "error rate 100.0% (3 of 3 calls)"),
        # Slower than the stable instances over the same window, though under the absolute limit.
        (
            window(calls=100, p99=200, stable=CallFigures(calls=300, errors=0, p50_ms=10, p99_ms=50)),
            "against the stable instances' 50 ms",
        ),
    ],
)
def test_canary_failing_its_gate_is_rolled_back_automatically(evidence: InstanceWindow, reason: str) -> None:
    rollout = approved()
    rollout.next_step(at=2.0)
    rollout.instance_started(instance_id="n-1", version="0.2.0", at=3.0)
    events = rollout.gate(evidence, POLICY, at=4.0, final=False)
    assert rollout.state == "rolling_back"
    rollback = events[-1]
    assert isinstance(rollback, RollbackStarted)
    assert rollback.automatic
    assert reason in rollback.reason
    assert "canary failed its gate" in rollback.reason
    # the old instance is kept: it was never drained, and can no longer be
    with pytest.raises(FailedPrecondition):
        rollout.drained(instance_id="m-1", at=5.0)
    assert rollout.upgraded_instances() == ["n-1"]
    rollout.rolled_back(at=6.0)
    assert rollout.state == "rolled_back"


def test_pause_holds_the_next_step_and_resume_continues() -> None:
    rollout = canary_complete()
    rollout.pause(actor="carol", actor_role="operator", reason="busy hour", at=6.0)
    with pytest.raises(FailedPrecondition, match="is paused"):
        rollout.next_step(at=7.0)
    rollout.resume(actor="carol", actor_role="operator", at=8.0)
    assert rollout.state == "canary"  # back where it was paused: canary complete
    run_step(rollout, "n-2")
    rollout.next_step(at=10.0)
    assert rollout.state == "done"


def test_operator_rollback_and_finished_rollouts_stay_finished() -> None:
    rollout = canary_complete()
    with pytest.raises(PermissionDenied):
        rollout.rollback(actor="eve", actor_role="member", reason="", at=6.0)
    [event] = rollout.rollback(actor="carol", actor_role="admin", reason="customer reports", at=6.0)
    assert isinstance(event, RollbackStarted)
    assert not event.automatic
    rollout.rolled_back(at=7.0)
    with pytest.raises(FailedPrecondition):
        rollout.resume(actor="carol", actor_role="admin", at=8.0)


def test_wrong_instance_or_version_is_refused() -> None:
    rollout = approved()
    rollout.next_step(at=2.0)
    with pytest.raises(InvalidArgument, match=r"runs 0\.1\.0"):
        rollout.instance_started(instance_id="n-1", version="0.1.0", at=3.0)
    rollout.instance_started(instance_id="n-1", version="0.2.0", at=3.0)
    with pytest.raises(InvalidArgument, match="gates n-1"):
        rollout.gate(healthy("other"), POLICY, at=4.0)


def test_plan_refuses_same_version_and_empty_fleet() -> None:
    with pytest.raises(FailedPrecondition, match="no running instance"):
        planned(())
    with pytest.raises(FailedPrecondition, match="already runs"):
        planned(from_version="0.2.0", actor_role="admin")


def canary_started() -> Rollout:
    rollout = approved()
    rollout.next_step(at=2.0)
    rollout.instance_started(instance_id="n-1", version="0.2.0", at=3.0)
    return rollout


def test_too_little_evidence_waits_then_fails_and_never_passes() -> None:
    rollout = canary_started()
    thin = window(calls=POLICY.min_requests - 1)
    assert rollout.gate(thin, POLICY, at=4.0, final=False, settled=False) == []
    assert rollout.gate(thin, POLICY, at=4.0, final=False) == []
    # One slow first call among too few is not a p99 yet; by the gate's time it is.
    slow = window(calls=3, p99=900)
    assert rollout.gate(slow, POLICY, at=4.0, final=False) == []
    # Nor is a slow p99 a verdict before the window ran its length.
    assert rollout.gate(window(calls=50, p99=900), POLICY, at=4.0, final=False, settled=False) == []
    assert rollout.state == "canary"
    assert rollout.steps[0].gate_passed is None
    healthy_so_far = window(calls=POLICY.min_requests + 5)
    assert rollout.gate(healthy_so_far, POLICY, at=4.5, final=False, settled=False) == []  # a pass needs the window
    events = rollout.gate(thin, POLICY, at=5.0, final=True)
    assert rollout.state == "rolling_back"
    assert "too little evidence: 19 calls" in rollout.rollback_reason
    verdict = events[0]
    assert isinstance(verdict, GateEvaluated)
    assert (verdict.passed, verdict.canary_calls) == (False, 19)


def test_every_verdict_records_its_figures() -> None:
    rollout = canary_started()
    stable = CallFigures(calls=400, errors=1, p50_ms=10, p99_ms=75)
    [verdict] = rollout.gate(window(calls=120, errors=1, p99=100, stable=stable), POLICY, at=4.0, final=False)
    assert isinstance(verdict, GateEvaluated)
    assert verdict.passed
    figures = (verdict.canary_calls, verdict.canary_errors, verdict.canary_p99_ms, verdict.stable_calls)
    assert figures == (120, 1, 100.0, 400)
    assert describe(verdict).startswith("step 0 at 100% passed (over 15.0 s")
    assert verdict.figures() == (
        "over 15.0 s: canary 120 calls, 1 errors, p50 50 ms, p99 100 ms; "
        "stable 400 calls, 1 errors, p50 10 ms, p99 75 ms"
    )
    # The figures survive the trip through the PATCH stream's protobuf form.
    assert codec.from_proto(codec.to_proto(verdict)) == verdict


def test_a_canary_that_exits_is_rolled_back_at_once_with_its_last_log_lines() -> None:
    rollout = approved()
    rollout.next_step(at=2.0)
    lines = ('{"msg": "starting"}', "Traceback (most recent call last):", "SystemExit: broken on purpose", "")
    events = rollout.instance_exited(
        instance_id="n-1", exit_code=1, last_log_lines=lines, at=3.0, actor="node-agent@host-1"
    )
    assert [type(e).__name__ for e in events] == ["InstanceExited", "GateEvaluated", "RollbackStarted"]
    assert rollout.state == "rolling_back"
    assert rollout.rollback_reason == "canary: n-1 exited with code 1: SystemExit: broken on purpose"
    step = rollout.steps[0]
    assert (step.new_instance, step.exit_code, step.gate_passed) == ("n-1", 1, False)
    assert events[0].actor == "node-agent@host-1"
    # Through the stream and back: the replayed roll-out knows the same.
    replayed = Rollout.replay([codec.from_proto(codec.to_proto(e)) for e in rollout.history])  # type: ignore[misc]
    assert replayed.steps[0].last_log_lines == lines
    # A second report of the same exit changes nothing.
    assert rollout.instance_exited(instance_id="n-1", exit_code=1, last_log_lines=lines, at=4.0) == []


def test_each_step_raises_the_new_instances_share_one_gated_phase_at_a_time() -> None:
    rollout, [plan] = planned(weights=DEFAULT_WEIGHTS)
    assert plan.weights == (10, 50, 100)  # type: ignore[attr-defined]
    rollout.approve(actor="bob", actor_role="operator", at=2.0)
    rollout.next_step(at=2.0)
    rollout.instance_started(instance_id="n-1", version="0.2.0", at=3.0)
    seen = []
    for at in (4.0, 5.0, 6.0):
        seen.append(rollout.current_weight)
        [verdict] = rollout.gate(healthy("n-1"), POLICY, at=at)
        assert isinstance(verdict, GateEvaluated)
        assert verdict.weight == seen[-1]
    assert seen == [10, 50, 100]
    assert rollout.steps[0].gate_passed  # only the pass at 100% lets the old instance go
    rollout.drained(instance_id="m-1", at=7.0)


def test_a_failure_at_a_small_share_rolls_back() -> None:
    rollout, _ = planned(weights=(5, 100))
    rollout.approve(actor="bob", actor_role="operator", at=2.0)
    rollout.next_step(at=2.0)
    rollout.instance_started(instance_id="n-1", version="0.2.0", at=3.0)
    rollout.gate(healthy("n-1"), POLICY, at=4.0)
    events = rollout.gate(window(calls=50, errors=50), POLICY, at=5.0)
    assert rollout.state == "rolling_back"
    assert describe(events[0]).startswith("step 0 at 100% failed: error rate 100.0%")


@pytest.mark.parametrize("weights", [(), (50, 10, 100), (10, 50), (0, 100), (10, 10, 100)])
def test_weights_must_rise_to_100(weights: tuple[int, ...]) -> None:
    with pytest.raises(InvalidArgument, match="rise and end at 100"):
        planned(weights=weights)
