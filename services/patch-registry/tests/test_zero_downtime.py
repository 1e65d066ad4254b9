"""Roll-outs on a real platform: messaging upgraded from A to B under continuous traffic.

Every service runs as its own process from this environment, except messaging, whose two
instances the node agent runs behind its front door. Release B is the messaging wheel built
from services/messaging at another version, published into the registry's TUF repository,
fetched by the agent with the stock ngclient and installed in its own venv. The client sends
all through the roll-out: no request may fail, and history must hold every acknowledged message.

The test plays the part of auth's role management (not built yet): it publishes a signing key on
the AUTH stream and signs operator tokens for the publisher and the approver with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from parley.patch.v1 import patch_pb2

from parley_cli.wheels import build_wheel
from parley_client import ParleyClient, ParleyError
from parley_core.pki import Pki
from parley_testing.nats import NatsTestServer
from parley_testing.rollout_platform import PLATFORM_TIMEOUTS, AgentPlatform, agent_platform
from parley_testing.traffic import Traffic, all_archived, send_continuously, sender_channel, sending

pytestmark = [pytest.mark.asyncio, pytest.mark.e2e, pytest.mark.timeout(900)]

REPO_ROOT = Path(__file__).resolve().parents[3]
MESSAGING_SOURCE = REPO_ROOT / "services" / "messaging"
# This test's client makes unary calls only, so the gateway's connections may recycle too.
TIMEOUTS = dataclasses.replace(PLATFORM_TIMEOUTS, streaming_services=frozenset())


@pytest_asyncio.fixture
async def cluster(
    request: pytest.FixtureRequest, nats_server: NatsTestServer, pki: Pki, tmp_path: Path
) -> AsyncIterator[AgentPlatform]:
    """Every service as its own process, except `managed` (default messaging): two instances, run by the agent."""
    managed: str = getattr(request, "param", "messaging")
    async with agent_platform(nats_server, pki, tmp_path, managed=managed, timeouts=TIMEOUTS) as platform:
        yield platform


def client_of(cluster: AgentPlatform) -> ParleyClient:
    return ParleyClient.connect(cluster.gateway_address, ca_cert=cluster.pki.ca_pem())


async def roll_out(cluster: AgentPlatform, wheel: Path, version: str, what: str) -> patch_pb2.Rollout:
    """`wheel` published, its roll-out planned and approved; the roll-out once done or rolled back."""
    await cluster.publish(wheel, version)
    rollout = await cluster.plan(version)
    await cluster.approve(rollout)
    return await cluster.finished(rollout.rollout_id, 600, what)


# Slow (about 95 s): `make test` keeps the same promise through tests/e2e/test_platform_rollout.py
# (a roll-out under continuous sends) and test_registry_service.py (a failing canary rolled back).
@pytest.mark.slow
async def test_upgrade_under_traffic_loses_nothing_and_a_failing_canary_rolls_back(
    cluster: AgentPlatform, tmp_path: Path
) -> None:
    wheel_b = await asyncio.to_thread(build_wheel, MESSAGING_SOURCE, "0.2.0", tmp_path / "wheels")
    broken_source = tmp_path / "broken" / "messaging"
    shutil.copytree(MESSAGING_SOURCE, broken_source, ignore=shutil.ignore_patterns("tests", "*.egg-info"))
    main = broken_source / "src" / "parley_messaging" / "__main__.py"
    main.write_text('raise SystemExit("this build of messaging is broken on purpose")\n')
    wheel_c = await asyncio.to_thread(build_wheel, broken_source, "0.3.0", tmp_path / "wheels")

    client = client_of(cluster)
    channel_id = await sender_channel(client, "carol", "upgrades")
    async with cluster.agent_running(), sending(client, channel_id) as traffic:
        # A -> B under traffic
        done = await roll_out(cluster, wheel_b, "0.2.0", "the roll-out to 0.2.0 to finish")
        assert done.state == "done", done.rollback_reason
        assert [s.gate for s in done.steps] == ["passed", "passed"]
        running = {i.version for i in cluster.agent.instances.values()}
        assert running == {"0.2.0"}
        assert len(cluster.agent.front_doors["messaging"].backends) == 2
        during_upgrade = traffic.acknowledged

        # B -> broken C: the canary exits at start; its agent reports the exit and the registry rolls it back
        rolled_back = await roll_out(cluster, wheel_c, "0.3.0", "the failing canary to be rolled back")
        assert rolled_back.state == "rolled_back"
        assert "exited with code 1" in rolled_back.rollback_reason
        assert {i.version for i in cluster.agent.instances.values()} == {"0.2.0"}
        assert len(cluster.agent.front_doors["messaging"].backends) == 2

    print(
        f"\nacknowledged sends: {traffic.acknowledged} ({during_upgrade} through the A->B roll-out); "
        f"failed: {len(traffic.failures)}"
    )
    assert traffic.failures == []
    assert during_upgrade > 0
    await all_archived(client, channel_id, traffic)
    await client.close()


@pytest.mark.slow
@pytest.mark.parametrize("cluster", ["gateway", "auth", "storage"], indirect=True)
async def test_two_instances_of_a_service_upgraded_under_traffic(cluster: AgentPlatform, tmp_path: Path) -> None:
    """Gateway, auth or storage from 0.1.0 to 0.2.0, one instance at a time, while a client sends
    through the gateway (and, for auth, logs in again and again): nothing fails, nothing is lost."""
    service = cluster.managed
    wheel = await asyncio.to_thread(build_wheel, REPO_ROOT / "services" / service, "0.2.0", tmp_path / "wheels")
    client = client_of(cluster)
    await client.register("carol", "a-long-passphrase")
    await client.login("carol", "a-long-passphrase")
    channel = await client.create_channel("upgrades")
    agent_task = cluster.start_agent()
    traffic = Traffic()
    workers = [asyncio.create_task(send_continuously(client, channel.channel_id, traffic))]
    logins = Traffic(stop=traffic.stop)
    if service == "auth":
        workers.append(asyncio.create_task(login_continuously(cluster, logins)))
    try:
        done = await roll_out(cluster, wheel, "0.2.0", f"the roll-out of {service} to 0.2.0 to finish")
        assert done.state == "done", done.rollback_reason
        assert {i.version for i in cluster.agent.instances.values()} == {"0.2.0"}
        assert len(cluster.agent.front_doors[service].backends) == 2
        if service == "gateway":
            # Each new instance took its phase's share of the client port, not the kernel's even
            # half (parley_core.port_share; the share itself: test_shared_port.py).
            shares = cluster.agent.log_path(service).read_text()
            assert shares.count("10% of new connections") == 2, shares[-3000:]
            assert shares.count("50% of new connections") == 2, shares[-3000:]
    finally:
        traffic.stop.set()
        await asyncio.gather(*workers)
        cluster.agent._stop.set()
        await agent_task

    print(
        f"\n{service}: acknowledged sends {traffic.acknowledged}, logins {logins.acknowledged}; "
        f"failed: {len(traffic.failures) + len(logins.failures)}"
    )
    assert traffic.failures == []
    assert logins.failures == []
    assert traffic.acknowledged > 0
    await all_archived(client, channel.channel_id, traffic)
    await client.close()


async def login_continuously(cluster: AgentPlatform, logins: Traffic) -> None:
    """Auth's own work through the gateway, one login after another."""
    client = client_of(cluster)
    try:
        while not logins.stop.is_set():
            try:
                await client.login("carol", "a-long-passphrase")
                logins.acknowledged += 1
            except ParleyError as error:
                logins.failures.append(f"login: {error}")
            # One a second: a steady trickle, not a password-guessing rate (argon2 is costly on purpose).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(logins.stop.wait(), 1.0)
    finally:
        await client.close()


@pytest.mark.slow  # minutes of roll-out under sends: `make test-all`; make test keeps a shorter roll-out test
async def test_a_done_rollout_is_reverted_to_the_base_release_through_an_approved_gated_rollout(
    cluster: AgentPlatform, tmp_path: Path
) -> None:
    """The base version is itself a signed release, so a finished roll-out can be undone: `patch
    rollback` of a done roll-out plans one back, another operator approves it, and the gate
    judges the old version like any new one. The reverted instances run the base wheel, fetched
    through TUF and installed, not the source folder."""
    base = await cluster.publish_base()
    assert (base.service, base.version) == ("messaging", "0.1.0")
    wheel_b = await asyncio.to_thread(build_wheel, MESSAGING_SOURCE, "0.2.0", tmp_path / "wheels")
    client = client_of(cluster)
    channel_id = await sender_channel(client, "carol", "reverts")
    async with cluster.agent_running(), sending(client, channel_id) as traffic:
        done = await roll_out(cluster, wheel_b, "0.2.0", "the roll-out to 0.2.0 to finish")
        assert done.state == "done", done.rollback_reason
        assert cluster.managed_versions() == {"0.2.0"}

        command = patch_pb2.RolloutCommand(rollout_id=done.rollout_id, reason="customers report slow sends")
        revert = await cluster.registry.RollbackRollout(command, metadata=cluster.operator("carla"), timeout=30)
        assert revert.rollout_id != done.rollout_id
        assert (revert.state, revert.from_version, revert.to_version) == ("planned", "0.2.0", "0.1.0")
        assert revert.reverts == done.rollout_id
        assert revert.reason == f"revert of {done.rollout_id}: customers report slow sends"
        await cluster.approve(revert)
        reverted = await cluster.finished(revert.rollout_id, 600, "the revert to 0.1.0 to finish")
        assert reverted.state == "done", reverted.rollback_reason
        assert [s.gate for s in reverted.steps] == ["passed", "passed"]
    assert cluster.managed_versions() == {"0.1.0"}
    installed = cluster.agent.installed_python("messaging", "0.1.0")
    assert installed is not None  # the base wheel, installed from the registry through TUF
    assert {i.python for i in cluster.agent.instances_of("messaging")} == {installed}
    planned_audit = next(a for a in reverted.audit if a.event == "RolloutPlanned")
    assert f"reverts {done.rollout_id}" in planned_audit.detail
    print(f"\nacknowledged sends: {traffic.acknowledged}; failed: {len(traffic.failures)}")
    assert traffic.failures == []
    await client.close()


@pytest.mark.slow  # `make test-all`, to keep make test within 15 minutes; roll-outs under traffic stay in make test
async def test_with_no_user_traffic_synthetic_transactions_give_the_gate_its_evidence(
    cluster: AgentPlatform, tmp_path: Path
) -> None:
    """Nobody sends: the agent sends and reads back messages through each new instance itself
    (as its prober account), so each gate has the calls it needs instead of failing for lack of them."""
    wheel_b = await asyncio.to_thread(build_wheel, MESSAGING_SOURCE, "0.2.0", tmp_path / "wheels")
    agent_task = cluster.start_agent()
    try:
        done = await roll_out(cluster, wheel_b, "0.2.0", "the roll-out to 0.2.0 to finish")
    finally:
        cluster.agent._stop.set()
        await agent_task
    assert done.state == "done", done.rollback_reason
    verdicts = [a.detail for a in done.audit if a.event == "GateEvaluated"]
    # Two steps, each gated at 10 %, 50 % and 100 % of new connections, each phase on its own calls.
    assert [v.split(" passed")[0] for v in verdicts] == [
        f"step {step} at {share}%" for step in (0, 1) for share in (10, 50, 100)
    ]
    for verdict in verdicts:
        calls = int(verdict.split("canary ")[1].split(" calls")[0])
        assert calls >= 20, verdict  # the gate's minimum (PARLEY_PATCH_GATE_MIN_REQUESTS)
    assert (cluster.agent.data_dir / "probe-messaging.json").stat().st_mode & 0o777 == 0o600
