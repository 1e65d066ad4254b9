"""What `parley up` prints about a roll-out: one line per step, verdict and state, in order."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest
from parley.patch.v1 import patch_pb2

from parley_agent.node_agent import Instance, NodeAgent
from parley_agent.progress import rollout_progress
from parley_core.net import free_port
from parley_core.pki import ensure_pki
from parley_core.topology import PLATFORM_USER
from parley_testing.rollouts import reported_rollout


def test_progress_names_each_step_and_verdict_with_its_figures() -> None:
    rollout = reported_rollout(
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


def test_progress_names_people_where_their_names_are_known() -> None:
    rollout = patch_pb2.Rollout(rollout_id="r1", planned_by="a0f293cc", approved_by="e05c0000", reason="fix")
    assert rollout_progress(rollout, {"a0f293cc": "olga", "e05c0000": "oscar"})[:2] == [
        "planned by olga (fix)",
        "approved by oscar",
    ]
    assert rollout_progress(rollout, {"a0f293cc": "olga"})[1] == "approved by e05c0000"  # unknown: the id


async def test_agent_tells_names_and_does_not_retell_a_line_once_its_name_is_found(tmp_path: Path) -> None:
    told: list[str] = []
    known = {"a0f293cc": "olga"}
    asked: list[list[str]] = []

    async def usernames(user_ids: Sequence[str]) -> dict[str, str]:
        asked.append(sorted(user_ids))
        return {u: known[u] for u in user_ids if u in known}

    agent = NodeAgent(
        data_dir=tmp_path / "agent",
        pki=ensure_pki(tmp_path / "pki", [PLATFORM_USER]),
        registry_address="127.0.0.1:1",  # never called here
        environment={},
        announce=told.append,
        usernames=usernames,
    )
    try:
        rollout = patch_pb2.Rollout(rollout_id="r1", service="messaging", to_version="0.2.0", planned_by="a0f293cc")
        await agent._tell_progress(rollout)
        rollout.approved_by = "e05c0000"
        await agent._tell_progress(rollout)
        known["e05c0000"] = "oscar"  # archived by now; the told lines stay told
        await agent._tell_progress(rollout)
    finally:
        await agent.stop()
    assert [line.split(": ", 1)[1] for line in told] == ["planned by olga", "approved by e05c0000"]
    assert asked == [["a0f293cc"], ["e05c0000"]]  # asked only when there was a line to tell


async def test_a_new_instances_exit_is_told_with_the_roll_out_lines(tmp_path: Path) -> None:
    """`parley up` prefixes what it is told; a warning logged instead lost the prefix."""
    told: list[str] = []
    agent = NodeAgent(
        data_dir=tmp_path / "agent",
        pki=ensure_pki(tmp_path / "pki", [PLATFORM_USER]),
        registry_address=f"127.0.0.1:{free_port()}",  # nobody there: the report itself fails
        environment={},
        log_dir=tmp_path / "logs",
        announce=told.append,
    )
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", "raise SystemExit(1)")
    await process.wait()
    instance = Instance("messaging", "0.3.0", "messaging-v0_3_0-50094e", 1, Path(sys.executable), process=process)
    try:
        with pytest.raises(grpc.aio.AioRpcError):
            await agent._report_exit(patch_pb2.Rollout(rollout_id="9b82a2775c9c"), instance)
    finally:
        await agent.stop()
    assert told == ["roll-out 9b82a2775c9c: messaging-v0_3_0-50094e exited with 1; reporting it"]
