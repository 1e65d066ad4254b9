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
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
import pytest_asyncio
from parley.patch.v1 import patch_pb2, patch_pb2_grpc
from securesystemslib.signer import CryptoSigner

from parley_agent.node_agent import AgentTimeouts, NodeAgent
from parley_cli.publishing import public_pem, publish_release
from parley_cli.wheels import build_wheel
from parley_client import ParleyClient, ParleyError
from parley_client.testing import Traffic, history_count, send_continuously
from parley_core.bus import EventBus
from parley_core.pki import Pki
from parley_core.runner import secure_channel
from parley_core.testing.nats import NatsTestServer
from parley_core.testing.operators import OperatorTokens
from parley_core.testing.waiting import eventually
from parley_core.topology import PLATFORM_USER, STREAMS

pytestmark = [pytest.mark.asyncio, pytest.mark.e2e, pytest.mark.timeout(900)]

REPO_ROOT = Path(__file__).resolve().parents[3]
MESSAGING_SOURCE = REPO_ROOT / "services" / "messaging"
T = TypeVar("T")
START_TIMEOUT_S = 120.0


@dataclass
class Cluster:
    data_dir: Path
    pki: Pki
    agent: NodeAgent
    registry: patch_pb2_grpc.PatchServiceAsyncStub
    gateway_address: str
    operators: OperatorTokens
    managed: str
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)
    agent_task: asyncio.Task[None] | None = None
    publisher: CryptoSigner | None = None

    def token(self, user: str, role: str = "operator") -> tuple[tuple[str, str]]:
        return self.operators.metadata(user, role)

    def client(self) -> ParleyClient:
        return ParleyClient.connect(self.gateway_address, ca_cert=self.pki.ca_pem())


async def _spawn(service: str, env: dict[str, str], logs: Path) -> asyncio.subprocess.Process:
    log = open(logs / f"{service}.log", "ab")  # noqa: SIM115 - handed to the child
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "parley_" + service.replace("-", "_"),
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    log.close()
    return process


async def _wait_healthy(pki: Pki, service: str, address: str, process: asyncio.subprocess.Process) -> None:
    from grpc_health.v1 import health_pb2

    async def probe() -> bool | None:
        if process.returncode is not None:
            raise RuntimeError(f"{service} exited with {process.returncode}")
        channel = secure_channel(pki, identity=PLATFORM_USER, address=address, peer=service)
        try:
            check = channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            response = await check(health_pb2.HealthCheckRequest(), timeout=2.0)
            return (response.status == health_pb2.HealthCheckResponse.SERVING) or None
        except Exception:
            return None
        finally:
            await channel.close()

    await eventually(probe, f"{service} healthy", START_TIMEOUT_S)


START_ORDER = ("auth", "storage", "patch-registry", "messaging", "gateway")
ADDRESS_ENV = {
    "auth": "PARLEY_AUTH_ADDR",
    "storage": "PARLEY_STORAGE_ADDR",
    "patch-registry": "PARLEY_REGISTRY_ADDR",
    "messaging": "PARLEY_MESSAGING_ADDR",
}


@pytest_asyncio.fixture
async def cluster(
    request: pytest.FixtureRequest, nats_server: NatsTestServer, pki: Pki, tmp_path: Path
) -> AsyncIterator[Cluster]:
    """Every service as its own process, except `managed` (default messaging): two instances, run by the agent."""
    from parley_core.net import free_port

    managed: str = getattr(request, "param", "messaging")
    data_dir = tmp_path / "data"
    (data_dir / "secrets").mkdir(parents=True)
    (data_dir / "logs").mkdir()
    (data_dir / "pki").symlink_to(pki.directory, target_is_directory=True)
    (data_dir / "secrets" / "nats-passwords.json").write_text(json.dumps(nats_server.passwords))
    platform = await nats_server.connect(PLATFORM_USER)
    bus = EventBus(platform, service=PLATFORM_USER, producer="test")
    await bus.ensure_streams(STREAMS)
    operators = OperatorTokens()
    await operators.publish(bus)
    ports = {s: free_port() for s in START_ORDER}
    env = {
        **os.environ,
        "PARLEY_DATA_DIR": str(data_dir),
        "PARLEY_NATS_URL": nats_server.url,
        "PARLEY_LISTEN_HOST": "127.0.0.1",
        "PARLEY_HEARTBEAT_SECONDS": "1",
        "PARLEY_REGISTRATION": "open",  # the test registers its users (default: admin-created accounts)
        "PARLEY_GRACE_SECONDS": "20",
        "PARLEY_PATCH_GATE_WINDOW_SECONDS": "3",
        "PARLEY_PATCH_GATE_TIMEOUT_SECONDS": "60",
        **{var: f"127.0.0.1:{ports[service]}" for service, var in ADDRESS_ENV.items()},
    }
    processes: list[asyncio.subprocess.Process] = []
    agent = NodeAgent(
        data_dir=data_dir / "agent",
        pki=pki,
        registry_address=env["PARLEY_REGISTRY_ADDR"],
        environment={k: v for k, v in env.items() if k.startswith("PARLEY_")},
        # This test's client makes unary calls only, so the gateway's connections may recycle too.
        timeouts=AgentTimeouts(
            healthy_s=START_TIMEOUT_S, reporting_s=60, drain_s=60, poll_s=0.3, streaming_services=frozenset()
        ),
    )
    try:
        for service in START_ORDER:
            address = f"127.0.0.1:{ports[service]}"
            if service == managed:
                await agent.open_front_door(service, port=ports[service])
                # Health only: the registry may not run yet; roll-outs wait for the fleet view.
                for _ in range(2):
                    try:
                        await agent.start_serving(service, "0.1.0", in_fleet=False)
                    except RuntimeError as error:  # the log lives in tmp_path: show it with the failure
                        raise RuntimeError(f"{error}\n{agent.log_path(service).read_text()[-4000:]}") from error
                continue
            process = await _spawn(
                service,
                {**env, "PARLEY_LISTEN_PORT": str(ports[service]), "PARLEY_INSTANCE_ID": f"{service}-1"},
                data_dir / "logs",
            )
            processes.append(process)
            await _wait_healthy(pki, service, address, process)
        registry_channel = secure_channel(
            pki, identity=PLATFORM_USER, address=env["PARLEY_REGISTRY_ADDR"], peer="patch-registry"
        )
        yield Cluster(
            data_dir=data_dir,
            pki=pki,
            agent=agent,
            registry=patch_pb2_grpc.PatchServiceStub(registry_channel),
            gateway_address=f"127.0.0.1:{ports['gateway']}",
            operators=operators,
            managed=managed,
            processes=processes,
        )
        await registry_channel.close()
    finally:
        await agent.stop()
        for process in reversed(processes):
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 30)
                except TimeoutError:
                    process.kill()


async def rollout_state(cluster: Cluster, rollout_id: str, states: set[str]) -> patch_pb2.Rollout | None:
    if cluster.agent_task is not None and cluster.agent_task.done():
        cluster.agent_task.result()  # the agent died: show why instead of waiting
    rollout = await cluster.registry.GetRollout(patch_pb2.GetRolloutRequest(rollout_id=rollout_id), timeout=10)
    return rollout if rollout.state in states else None


async def publish_and_roll(cluster: Cluster, wheel: Path, version: str) -> patch_pb2.Rollout:
    service = cluster.managed
    publisher, planner, approver = cluster.token("dave"), cluster.token("alice"), cluster.token("bob")
    if cluster.publisher is None:  # the publisher's own key; the registry is given its public half
        cluster.publisher = CryptoSigner.generate_ed25519()
        await cluster.registry.SetPublisherKey(
            patch_pb2.SetPublisherKeyRequest(service=service, public_key_pem=public_pem(cluster.publisher)),
            metadata=publisher,
            timeout=30,
        )
    await publish_release(
        cluster.registry,
        signer=cluster.publisher,
        service=service,
        version=version,
        wheel_name=wheel.name,
        wheel=wheel.read_bytes(),
        metadata=publisher,
        timeout=30,
    )

    async def plan() -> patch_pb2.Rollout | None:
        rollout = await cluster.registry.PlanRollout(
            patch_pb2.PlanRolloutRequest(service=service, to_version=version), metadata=planner, timeout=10
        )
        if len(rollout.old_instances) == 2:
            return rollout
        await cluster.registry.RollbackRollout(
            patch_pb2.RolloutCommand(rollout_id=rollout.rollout_id), metadata=planner, timeout=10
        )
        await cluster.registry.ReportRolledBack(patch_pb2.GetRolloutRequest(rollout_id=rollout.rollout_id), timeout=10)
        return None

    rollout = await eventually(plan, f"a plan over both {service} instances", 60)
    await cluster.registry.ApproveRollout(
        patch_pb2.RolloutCommand(rollout_id=rollout.rollout_id), metadata=approver, timeout=10
    )
    return rollout


async def test_upgrade_under_traffic_loses_nothing_and_a_failing_canary_rolls_back(
    cluster: Cluster, tmp_path: Path
) -> None:
    wheel_b = await asyncio.to_thread(build_wheel, MESSAGING_SOURCE, "0.2.0", tmp_path / "wheels")
    broken_source = tmp_path / "broken" / "messaging"
    shutil.copytree(MESSAGING_SOURCE, broken_source, ignore=shutil.ignore_patterns("tests", "*.egg-info"))
    main = broken_source / "src" / "parley_messaging" / "__main__.py"
    main.write_text('raise SystemExit("this build of messaging is broken on purpose")\n')
    wheel_c = await asyncio.to_thread(build_wheel, broken_source, "0.3.0", tmp_path / "wheels")

    client = cluster.client()
    await client.register("carol", "a-long-passphrase")
    await client.login("carol", "a-long-passphrase")
    channel = await client.create_channel("upgrades")
    agent_task = cluster.agent_task = asyncio.create_task(cluster.agent.run())
    traffic = Traffic()
    sender = asyncio.create_task(send_continuously(client, channel.channel_id, traffic))
    try:
        # A -> B under traffic
        rollout = await publish_and_roll(cluster, wheel_b, "0.2.0")
        done = await eventually(
            lambda: rollout_state(cluster, rollout.rollout_id, {"done", "rolled_back"}),
            "the roll-out to 0.2.0 to finish",
            600,
        )
        assert done.state == "done", done.rollback_reason
        assert [s.gate for s in done.steps] == ["passed", "passed"]
        running = {i.version for i in cluster.agent.instances.values()}
        assert running == {"0.2.0"}
        assert len(cluster.agent.front_doors["messaging"].backends) == 2
        during_upgrade = traffic.acknowledged

        # B -> broken C: the canary never becomes healthy, the registry rolls it back on its own
        bad = await publish_and_roll(cluster, wheel_c, "0.3.0")
        rolled_back = await eventually(
            lambda: rollout_state(cluster, bad.rollout_id, {"rolled_back", "done"}),
            "the failing canary to be rolled back",
            600,
        )
        assert rolled_back.state == "rolled_back"
        assert "canary failed its gate" in rolled_back.rollback_reason
        assert {i.version for i in cluster.agent.instances.values()} == {"0.2.0"}
        assert len(cluster.agent.front_doors["messaging"].backends) == 2
    finally:
        traffic.stop.set()
        await sender
        cluster.agent._stop.set()
        await agent_task

    print(
        f"\nacknowledged sends: {traffic.acknowledged} ({during_upgrade} through the A->B roll-out); "
        f"failed: {len(traffic.failures)}"
    )
    assert traffic.failures == []
    assert during_upgrade > 0

    async def archived() -> int | None:
        count = await history_count(client, channel.channel_id)
        return count if count >= traffic.acknowledged else None

    assert await eventually(archived, "every acknowledged message in history", 120) == traffic.acknowledged
    await client.close()


@pytest.mark.slow
@pytest.mark.parametrize("cluster", ["gateway", "auth", "storage"], indirect=True)
async def test_two_instances_of_a_service_upgraded_under_traffic(cluster: Cluster, tmp_path: Path) -> None:
    """Gateway, auth or storage from 0.1.0 to 0.2.0, one instance at a time, while a client sends
    through the gateway (and, for auth, logs in again and again): nothing fails, nothing is lost."""
    service = cluster.managed
    wheel = await asyncio.to_thread(build_wheel, REPO_ROOT / "services" / service, "0.2.0", tmp_path / "wheels")
    client = cluster.client()
    await client.register("carol", "a-long-passphrase")
    await client.login("carol", "a-long-passphrase")
    channel = await client.create_channel("upgrades")
    cluster.agent_task = asyncio.create_task(cluster.agent.run())
    traffic = Traffic()
    workers = [asyncio.create_task(send_continuously(client, channel.channel_id, traffic))]
    logins = Traffic(stop=traffic.stop)
    if service == "auth":
        workers.append(asyncio.create_task(login_continuously(cluster, logins)))
    try:
        rollout = await publish_and_roll(cluster, wheel, "0.2.0")
        done = await eventually(
            lambda: rollout_state(cluster, rollout.rollout_id, {"done", "rolled_back"}),
            f"the roll-out of {service} to 0.2.0 to finish",
            600,
        )
        assert done.state == "done", done.rollback_reason
        assert {i.version for i in cluster.agent.instances.values()} == {"0.2.0"}
        assert len(cluster.agent.front_doors[service].backends) == 2
    finally:
        traffic.stop.set()
        await asyncio.gather(*workers)
        cluster.agent._stop.set()
        await cluster.agent_task

    print(
        f"\n{service}: acknowledged sends {traffic.acknowledged}, logins {logins.acknowledged}; "
        f"failed: {len(traffic.failures) + len(logins.failures)}"
    )
    assert traffic.failures == []
    assert logins.failures == []
    assert traffic.acknowledged > 0

    async def archived() -> int | None:
        count = await history_count(client, channel.channel_id)
        return count if count >= traffic.acknowledged else None

    assert await eventually(archived, "every acknowledged message in history", 120) == traffic.acknowledged
    await client.close()


async def login_continuously(cluster: Cluster, logins: Traffic) -> None:
    """Auth's own work through the gateway, one login after another."""
    client = cluster.client()
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
