"""Broken releases of messaging rolled out under continuous sends: every one is rolled back.

Three kinds of broken release, each a real wheel of messaging built from a copy of the source
with its `__main__` changed: one that crashes at start, one whose every send fails (INTERNAL),
one whose every send takes 3 s longer. Each is published, planned, approved by another operator
and rolled out by the node agent while a client sends one message after another. None may pass
its canary gate; each verdict's figures must be in the audit; a crash must be reported by the
agent with the instance's last log lines. The failed sends of each roll-out are counted and
published as figures (a broken canary's share of the calls until its rollback).

The default run rolls out one of each kind; `make faults` runs ten of each.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from parley.patch.v1 import patch_pb2
from workload import publish_figures

from parley_agent.front_door import FrontDoor
from parley_cli.wheels import build_wheel
from parley_client import ParleyClient
from parley_core.pki import Pki
from parley_testing.nats import NatsTestServer
from parley_testing.rollout_platform import PLATFORM_TIMEOUTS, AgentPlatform, agent_platform
from parley_testing.traffic import history_count, sender_channel, sending
from parley_testing.waiting import eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.e2e, pytest.mark.timeout(3600)]

MESSAGING_SOURCE = Path(__file__).resolve().parents[2] / "services" / "messaging"
# The client makes unary calls only, so the gateway's connections to messaging may recycle.
TIMEOUTS = dataclasses.replace(PLATFORM_TIMEOUTS, streaming_services=frozenset())

_RUN = """
from parley_core.runner import run_service
from parley_messaging.service import MessagingApp

{patch}

if __name__ == "__main__":
    run_service(MessagingApp, service="messaging")
"""
BROKEN_MAINS = {
    "crash-at-start": 'raise SystemExit("this build of messaging is broken on purpose")\n',
    "fail-every-call": _RUN.format(
        patch="""import grpc


async def _refuse(self, request, context):
    print("refused a send on purpose", flush=True)  # counted by the retry test
    await context.abort(grpc.StatusCode.INTERNAL, "broken on purpose")


MessagingApp.PostMessage = _refuse"""
    ),
    "slow-every-call": _RUN.format(
        patch="""import asyncio

_post = MessagingApp.PostMessage


async def _slow(self, request, context):
    await asyncio.sleep(3)
    return await _post(self, request, context)


MessagingApp.PostMessage = _slow"""
    ),
}


@pytest_asyncio.fixture
async def cluster(nats_server: NatsTestServer, pki: Pki, tmp_path: Path) -> AsyncIterator[AgentPlatform]:
    async with agent_platform(nats_server, pki, tmp_path, timeouts=TIMEOUTS) as platform:
        yield platform


def broken_wheel(kind: str, version: str, folder: Path) -> Path:
    source = folder / f"{kind}-{version}" / "messaging"
    shutil.copytree(MESSAGING_SOURCE, source, ignore=shutil.ignore_patterns("tests", "*.egg-info", "__pycache__"))
    (source / "src" / "parley_messaging" / "__main__.py").write_text(BROKEN_MAINS[kind])
    return build_wheel(source, version, folder / "wheels")


def check_verdict(kind: str, rollout: patch_pb2.Rollout) -> None:
    """Rolled back, for the kind's own reason, with the evidence in the audit."""
    assert rollout.state == "rolled_back", rollout
    canary = rollout.steps[0]
    assert canary.gate == "failed"
    assert [s.drained for s in rollout.steps] == [False]  # the stable instance was never stopped
    events = [a.event for a in rollout.audit]
    assert events[-2:] == ["RollbackStarted", "RolloutRolledBack"], events
    verdict = next(a for a in rollout.audit if a.event == "GateEvaluated")
    if kind == "crash-at-start":
        # Reported by the agent as it happened, not found later by a silent gate.
        assert "InstanceExited" in events
        assert "exited with code 1" in rollout.rollback_reason
        assert any("broken on purpose" in line for line in canary.last_log_lines), canary.last_log_lines
        assert canary.exited == "exited with code 1"
        exited = next(a for a in rollout.audit if a.event == "InstanceExited")
        assert exited.actor.startswith("node-agent@")
    else:
        assert "canary failed its gate" in rollout.rollback_reason
        assert "canary " in verdict.detail
        assert " calls, " in verdict.detail
        assert "p99" in verdict.detail
        reason = "error rate" if kind == "fail-every-call" else "p99 latency"
        assert reason in rollout.rollback_reason, rollout.rollback_reason


async def check_force_is_needed_again(cluster: AgentPlatform, failed_version: str) -> None:
    """A release that failed its canary goes out again only with --force and a reason, in the audit."""
    request = patch_pb2.PlanRolloutRequest(service="messaging", to_version=failed_version)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await cluster.registry.PlanRollout(request, metadata=cluster.operator("alice"), timeout=30)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--force" in (refused.value.details() or "")
    forced = patch_pb2.PlanRolloutRequest(
        service="messaging", to_version=failed_version, force=True, reason="the fix is in the config, not the code"
    )
    rollout = await cluster.registry.PlanRollout(forced, metadata=cluster.operator("alice"), timeout=30)
    assert rollout.forced
    planned = next(a for a in rollout.audit if a.event == "RolloutPlanned")
    assert "FORCED over a failed canary" in planned.detail
    assert "reason: the fix is in the config, not the code" in planned.detail
    command = patch_pb2.RolloutCommand(rollout_id=rollout.rollout_id, reason="not today")
    await cluster.registry.RollbackRollout(command, metadata=cluster.operator("alice"), timeout=30)
    await cluster.finished(rollout.rollout_id, 60, "the forced plan to be dropped")


async def roll_out_broken_releases(cluster: AgentPlatform, tmp_path: Path, rounds: int) -> None:
    async with ParleyClient.connect(cluster.gateway_address, ca_cert=cluster.pki.ca_pem()) as client:
        channel_id = await sender_channel(client, "carol", "canaries")
        passes = 0
        failed_sends: dict[str, list[int]] = {kind: [] for kind in BROKEN_MAINS}
        minor = 1
        async with cluster.agent_running(), sending(client, channel_id) as traffic:
            for _ in range(rounds):
                for kind in BROKEN_MAINS:
                    minor += 1
                    version = f"0.{minor}.0"
                    wheel = await asyncio.to_thread(broken_wheel, kind, version, tmp_path)
                    await cluster.publish(wheel, version)
                    rollout = await cluster.plan(version)
                    failures_before = len(traffic.failures)
                    await cluster.approve(rollout)
                    finished = await cluster.finished(rollout.rollout_id, 300, f"the {kind} canary {version} to finish")
                    failed_sends[kind].append(len(traffic.failures) - failures_before)
                    passes += finished.state == "done" or any(s.gate == "passed" for s in finished.steps)
                    check_verdict(kind, finished)
                    assert cluster.managed_versions() == {"0.1.0"}
                    assert len(cluster.agent.front_doors["messaging"].backends) == 2
            await check_force_is_needed_again(cluster, f"0.{minor}.0")
    publish_figures(
        f"broken-canaries-x{rounds}",
        {
            "rollouts": rounds * len(BROKEN_MAINS),
            "passes": passes,
            "acknowledged_sends": traffic.acknowledged,
            "failed_sends_per_rollout": failed_sends,
        },
    )
    assert passes == 0
    assert traffic.acknowledged > 0
    # A send the broken canary refused (INTERNAL, nothing appended) or that its crash cut off
    # is sent again by the gateway on a stable instance, with the same key: no user sees it.
    assert failed_sends["fail-every-call"] == [0] * rounds, failed_sends
    assert failed_sends["crash-at-start"] == [0] * rounds, failed_sends


async def test_sends_a_broken_canary_refuses_are_sent_again_on_a_stable_instance(
    cluster: AgentPlatform, tmp_path: Path
) -> None:
    """A canary whose every send fails (INTERNAL) takes 90 % of new connections to messaging, and
    no gate takes it away: every send it refuses is sent again by the gateway, with the same key,
    through the front door's stable address. The user sees no failure and no message twice."""
    wheel = await asyncio.to_thread(broken_wheel, "fail-every-call", "0.9.0", tmp_path)
    agent = cluster.agent
    canary = await agent.start_instance("messaging", "0.9.0", await agent.install("messaging", "0.9.0", wheel))
    assert await agent.wait_ready(canary, in_fleet=False)
    door = agent.front_doors["messaging"]
    assert isinstance(door, FrontDoor)
    door.set_share(canary.address, 90)
    door.add(canary.address)

    client = ParleyClient.connect(cluster.gateway_address, ca_cert=cluster.pki.ca_pem())
    channel_id = await sender_channel(client, "carol", "retried")

    async def refused() -> int | None:  # the gateway's connections moved onto the canary (they age out every 5 s)
        count = agent.log_path("messaging").read_text(errors="replace").count("refused a send on purpose")
        return count if count >= 20 else None

    try:
        async with sending(client, channel_id) as traffic:
            refusals = await eventually(refused, "the canary to refuse 20 sends", 120)
    finally:
        await agent.drain(canary.instance_id, failed=True)

    async def archived() -> int | None:
        count = await history_count(client, channel_id)
        return count if count >= traffic.acknowledged else None

    stored = await eventually(archived, "every acknowledged send in history", 60)
    await client.close()
    print(f"\nsends refused by the canary: {refusals}; acknowledged: {traffic.acknowledged}")
    print(f"failed: {traffic.failures}")
    assert traffic.failures == []
    assert stored == traffic.acknowledged  # each once: the second try's key found no first message


async def test_one_broken_release_of_each_kind_is_rolled_back_under_sends(
    cluster: AgentPlatform, tmp_path: Path
) -> None:
    await roll_out_broken_releases(cluster, tmp_path, rounds=1)


@pytest.mark.slow
async def test_ten_broken_releases_of_each_kind_are_all_rolled_back_under_sends(
    cluster: AgentPlatform, tmp_path: Path
) -> None:
    await roll_out_broken_releases(cluster, tmp_path, rounds=10)
