"""A platform for roll-out tests: every service a process of its own, one service run by the agent.

auth, storage, patch-registry, messaging and gateway each run as a process from this
environment, except `managed`, whose two instances the node agent runs behind its front door
(on the address the other services are given). Operator tokens are signed with a key published
on the AUTH stream (the part auth's role management will play); releases are signed with a
publisher key of the platform's own, as `parley patch publish` signs them. Shared by the patch
registry's zero-downtime tests and the rolling upgrade under Locust load in tests/faults.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from parley.patch.v1 import events_pb2, patch_pb2, patch_pb2_grpc
from securesystemslib.signer import CryptoSigner

from parley_agent import AgentTimeouts, Door, NodeAgent
from parley_agent.front_door import FrontDoor
from parley_agent.health import is_serving
from parley_cli.publishing import publish_base_release, publish_release
from parley_core.bus import EventBus
from parley_core.config import PEER_ADDRESS_ENV, STABLE_ADDRESS_ENV
from parley_core.grpc_channel import secure_channel
from parley_core.net import free_port
from parley_core.pki import Pki
from parley_core.topology import PLATFORM_USER, STREAMS
from parley_testing.nats import NatsTestServer
from parley_testing.operators import OperatorTokens
from parley_testing.planning import delegated_publisher
from parley_testing.waiting import eventually

START_TIMEOUT_S = 120.0
MANAGED_INSTANCES = 2
START_ORDER = ("auth", "storage", "patch-registry", "messaging", "gateway")
PLATFORM_TIMEOUTS = AgentTimeouts(healthy_s=START_TIMEOUT_S, reporting_s=60, drain_s=60, poll_s=0.3)


@dataclass
class AgentPlatform:
    data_dir: Path
    pki: Pki
    agent: NodeAgent
    registry: patch_pb2_grpc.PatchServiceAsyncStub
    gateway_address: str
    operators: OperatorTokens
    managed: str
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)
    agent_task: asyncio.Task[None] | None = None
    publisher_key: CryptoSigner | None = None

    def operator(self, user: str, role: str = "operator") -> tuple[tuple[str, str]]:
        """Call metadata of an operator; publisher and approver must be different people."""
        return self.operators.metadata(user, role)

    def managed_versions(self) -> set[str]:
        return {i.version for i in self.agent.instances_of(self.managed)}

    def start_agent(self) -> asyncio.Task[None]:
        self.agent_task = asyncio.create_task(self.agent.run())
        return self.agent_task

    @asynccontextmanager
    async def agent_running(self) -> AsyncIterator[NodeAgent]:
        """The node agent taking roll-out steps all through the block; stopped at its end."""
        task = self.start_agent()
        try:
            yield self.agent
        finally:
            self.agent._stop.set()
            await task

    async def publish(self, wheel: Path, version: str, publisher: str = "dave") -> None:
        """A release of the managed service, signed with the publisher's own key as `parley patch publish` does."""
        metadata = self.operator(publisher)
        if self.publisher_key is None:  # created once; the registry is given its public half
            self.publisher_key = await delegated_publisher(self.registry, self.managed, metadata=metadata, timeout=30)
        await publish_release(
            self.registry,
            signer=self.publisher_key,
            service=self.managed,
            version=version,
            wheel_name=wheel.name,
            wheel=await asyncio.to_thread(wheel.read_bytes),
            metadata=metadata,
            timeout=30,
        )

    async def publish_base(self, version: str = "0.1.0") -> events_pb2.ReleasePublished:
        """The managed service's base version as a release, as `parley up` publishes it at first start."""
        return await publish_base_release(self.registry, service=self.managed, version=version)

    async def plan(self, version: str, planner: str = "alice") -> patch_pb2.Rollout:
        """A roll-out of the managed service to `version` over every instance (not approved yet)."""
        metadata = self.operator(planner)

        async def plan() -> patch_pb2.Rollout | None:
            rollout = await self.registry.PlanRollout(
                patch_pb2.PlanRolloutRequest(service=self.managed, to_version=version), metadata=metadata, timeout=10
            )
            if len(rollout.old_instances) == MANAGED_INSTANCES:
                return rollout
            # Planned before every instance had reported: drop that plan and plan again.
            command = patch_pb2.RolloutCommand(rollout_id=rollout.rollout_id)
            await self.registry.RollbackRollout(command, metadata=metadata, timeout=10)
            await self.registry.ReportRolledBack(patch_pb2.GetRolloutRequest(rollout_id=rollout.rollout_id), timeout=10)
            return None

        return await eventually(plan, f"a plan over every {self.managed} instance", 60)

    async def approve(self, rollout: patch_pb2.Rollout, approver: str = "bob") -> None:
        """Approved by someone other than the publisher: from here the agent rolls it out."""
        command = patch_pb2.RolloutCommand(rollout_id=rollout.rollout_id)
        await self.registry.ApproveRollout(command, metadata=self.operator(approver), timeout=10)

    async def finished(self, rollout_id: str, timeout: float, what: str = "") -> patch_pb2.Rollout:
        """The roll-out once it is done or rolled back; the agent's own failure if it died."""

        async def probe() -> patch_pb2.Rollout | None:
            if self.agent_task is not None and self.agent_task.done():
                self.agent_task.result()  # the agent died: show why instead of waiting
            rollout = await self.registry.GetRollout(patch_pb2.GetRolloutRequest(rollout_id=rollout_id), timeout=10)
            return rollout if rollout.state in {"done", "rolled_back"} else None

        return await eventually(probe, what or f"roll-out {rollout_id} to finish", timeout, interval=0.5)


async def _spawn(service: str, env: dict[str, str], logs: Path) -> asyncio.subprocess.Process:
    with (logs / f"{service}.log").open("ab") as log:  # the child keeps its own copy of the descriptor
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "parley_" + service.replace("-", "_"),
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )


async def _wait_serving(pki: Pki, service: str, address: str, process: asyncio.subprocess.Process, log: Path) -> None:
    async def probe() -> bool | None:
        if process.returncode is not None:  # the log lives in a temporary folder: show it with the failure
            output = await asyncio.to_thread(log.read_text)
            raise RuntimeError(f"{service} exited with {process.returncode}\n{output[-4000:]}")
        return await is_serving(pki, service=service, address=address) or None

    await eventually(probe, f"{service} healthy", START_TIMEOUT_S)


async def _start_managed(agent: NodeAgent, service: str, port: int, *, in_fleet: bool) -> Door:
    door = await agent.open_front_door(service, port=port)
    for _ in range(MANAGED_INSTANCES):  # one after the other, as the agent starts a service
        try:
            await agent.start_serving(service, "0.1.0", in_fleet=in_fleet)
        except RuntimeError as error:  # the log lives in a temporary folder: show it with the failure
            raise RuntimeError(f"{error}\n{agent.log_path(service).read_text()[-4000:]}") from error
    return door


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()


@asynccontextmanager
async def agent_platform(
    nats_server: NatsTestServer,
    pki: Pki,
    root: Path,
    *,
    managed: str = "messaging",
    timeouts: AgentTimeouts = PLATFORM_TIMEOUTS,
) -> AsyncIterator[AgentPlatform]:
    data_dir = root / "data"
    (data_dir / "secrets").mkdir(parents=True)
    (data_dir / "logs").mkdir()
    (data_dir / "pki").symlink_to(pki.directory, target_is_directory=True)
    (data_dir / "secrets" / "nats-passwords.json").write_text(json.dumps(nats_server.passwords))
    bus = EventBus(await nats_server.connect(PLATFORM_USER), service=PLATFORM_USER, producer="test")
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
        "PARLEY_REGISTRATION": "open",  # the tests' users register themselves (default: admin-created accounts)
        "PARLEY_GRACE_SECONDS": "20",
        "PARLEY_PATCH_GATE_WINDOW_SECONDS": "3",
        "PARLEY_PATCH_GATE_TIMEOUT_SECONDS": "60",
        **{var: f"127.0.0.1:{ports[service]}" for service, var in PEER_ADDRESS_ENV.items()},
    }
    agent = NodeAgent(
        data_dir=data_dir / "agent",
        pki=pki,
        registry_address=env["PARLEY_REGISTRY_ADDR"],
        environment={k: v for k, v in env.items() if k.startswith("PARLEY_")},
        timeouts=timeouts,
    )
    registry_channel = secure_channel(
        pki, identity=PLATFORM_USER, address=env["PARLEY_REGISTRY_ADDR"], peer="patch-registry"
    )
    platform = AgentPlatform(
        data_dir=data_dir,
        pki=pki,
        agent=agent,
        registry=patch_pb2_grpc.PatchServiceStub(registry_channel),
        gateway_address=f"127.0.0.1:{ports['gateway']}",
        operators=operators,
        managed=managed,
    )
    try:
        started: set[str] = set()
        for service in START_ORDER:
            if service == managed:
                # Started before the registry, its instances can show health only, not the fleet view.
                door = await _start_managed(agent, service, ports[service], in_fleet="patch-registry" in started)
                if isinstance(door, FrontDoor) and service in STABLE_ADDRESS_ENV:  # for the gateway, started later
                    env[STABLE_ADDRESS_ENV[service]] = door.stable_address
            else:
                own = {"PARLEY_LISTEN_PORT": str(ports[service]), "PARLEY_INSTANCE_ID": f"{service}-1"}
                process = await _spawn(service, {**env, **own}, data_dir / "logs")
                platform.processes.append(process)
                log = data_dir / "logs" / f"{service}.log"
                await _wait_serving(pki, service, f"127.0.0.1:{ports[service]}", process, log)
            started.add(service)
        yield platform
    finally:
        if platform.agent_task is not None:
            platform.agent_task.cancel()  # its passes are idempotent: stopping mid-pass is safe
            await asyncio.gather(platform.agent_task, return_exceptions=True)
        await agent.stop()
        for process in reversed(platform.processes):
            await _stop(process)
        await registry_channel.close()
