"""A platform whose messaging runs under the node agent, so the patch registry can roll it out.

auth, storage, patch-registry and gateway run as processes from this environment; messaging
runs as two instances behind the agent's front door, as in the patch registry's own zero-downtime
test. The test signs operator tokens itself with a key it publishes on the AUTH stream (the part
auth's role management will play).
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

from parley.patch.v1 import patch_pb2, patch_pb2_grpc

from parley_agent import AgentTimeouts, NodeAgent
from parley_cli.health import check_health
from parley_core.bus import EventBus
from parley_core.net import free_port
from parley_core.pki import Pki
from parley_core.runner import secure_channel
from parley_core.testing.nats import NatsTestServer
from parley_core.testing.operators import OperatorTokens
from parley_core.testing.waiting import eventually
from parley_core.topology import PLATFORM_USER, STREAMS

START_TIMEOUT_S = 120.0
SERVICES_AS_PROCESSES = ("auth", "storage", "patch-registry")
MESSAGING_INSTANCES = 2


@dataclass
class AgentPlatform:
    data_dir: Path
    pki: Pki
    agent: NodeAgent
    registry: patch_pb2_grpc.PatchServiceAsyncStub
    gateway_address: str
    signer: OperatorTokens
    agent_task: asyncio.Task[None] | None = None
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)

    def operator(self, user: str) -> tuple[tuple[str, str]]:
        """Call metadata of an operator; publisher and approver must be different people."""
        return self.signer.metadata(user)

    def messaging_versions(self) -> set[str]:
        return {i.version for i in self.agent.instances.values() if i.service == "messaging"}

    async def publish_and_plan(self, wheel: Path, version: str) -> patch_pb2.Rollout:
        """Publish a messaging release and plan its roll-out over every instance (not approved yet)."""
        publisher, planner = self.operator("dave"), self.operator("alice")
        await self.registry.PublishRelease(
            patch_pb2.PublishReleaseRequest(
                service="messaging",
                version=version,
                wheel_name=wheel.name,
                wheel=wheel.read_bytes(),
                min_event_schema=1,
            ),
            metadata=publisher,
            timeout=30,
        )

        async def plan() -> patch_pb2.Rollout | None:
            rollout = await self.registry.PlanRollout(
                patch_pb2.PlanRolloutRequest(service="messaging", to_version=version), metadata=planner, timeout=10
            )
            if len(rollout.old_instances) == MESSAGING_INSTANCES:
                return rollout
            # Planned before every instance had reported: drop that plan and plan again.
            command = patch_pb2.RolloutCommand(rollout_id=rollout.rollout_id)
            await self.registry.RollbackRollout(command, metadata=planner, timeout=10)
            await self.registry.ReportRolledBack(patch_pb2.GetRolloutRequest(rollout_id=rollout.rollout_id), timeout=10)
            return None

        return await eventually(plan, "a plan over every messaging instance", 60)

    async def approve(self, rollout: patch_pb2.Rollout) -> None:
        """Approved by someone other than the publisher: from here the agent rolls it out."""
        command = patch_pb2.RolloutCommand(rollout_id=rollout.rollout_id)
        await self.registry.ApproveRollout(command, metadata=self.operator("bob"), timeout=10)

    async def finished(self, rollout_id: str, timeout: float) -> patch_pb2.Rollout:
        """The roll-out once it is done or rolled back; the agent's own failure if it died."""

        async def probe() -> patch_pb2.Rollout | None:
            if self.agent_task is not None and self.agent_task.done():
                self.agent_task.result()
            rollout = await self.registry.GetRollout(patch_pb2.GetRolloutRequest(rollout_id=rollout_id), timeout=10)
            return rollout if rollout.state in {"done", "rolled_back"} else None

        return await eventually(probe, f"roll-out {rollout_id} to finish", timeout, interval=0.5)

    def start_agent(self) -> None:
        self.agent_task = asyncio.create_task(self.agent.run())


async def _spawn(service: str, env: dict[str, str], logs: Path) -> asyncio.subprocess.Process:
    with (logs / f"{service}.log").open("ab") as log:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "parley_" + service.replace("-", "_"),
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )


async def _wait_healthy(pki: Pki, service: str, address: str, process: asyncio.subprocess.Process) -> None:
    async def probe() -> bool | None:
        if process.returncode is not None:
            raise RuntimeError(f"{service} exited with {process.returncode}")
        return (await check_health(pki, service=service, address=address) == "SERVING") or None

    await eventually(probe, f"{service} healthy", START_TIMEOUT_S)


@asynccontextmanager
async def agent_platform(nats_server: NatsTestServer, pki: Pki, root: Path) -> AsyncIterator[AgentPlatform]:
    data_dir = root / "data"
    (data_dir / "secrets").mkdir(parents=True)
    (data_dir / "logs").mkdir()
    (data_dir / "pki").symlink_to(pki.directory, target_is_directory=True)
    (data_dir / "secrets" / "nats-passwords.json").write_text(json.dumps(nats_server.passwords))
    signer = OperatorTokens()
    bus = EventBus(await nats_server.connect(PLATFORM_USER), service=PLATFORM_USER, producer="test")
    await bus.ensure_streams(STREAMS)
    await signer.publish(bus)
    ports = {s: free_port() for s in (*SERVICES_AS_PROCESSES, "gateway")}
    env = {
        **os.environ,
        "PARLEY_DATA_DIR": str(data_dir),
        "PARLEY_NATS_URL": nats_server.url,
        "PARLEY_LISTEN_HOST": "127.0.0.1",
        "PARLEY_HEARTBEAT_SECONDS": "1",
        "PARLEY_REGISTRATION": "open",  # Locust's users register themselves
        "PARLEY_GRACE_SECONDS": "20",
        "PARLEY_PATCH_GATE_WINDOW_SECONDS": "3",
        "PARLEY_PATCH_GATE_TIMEOUT_SECONDS": "60",
        "PARLEY_AUTH_ADDR": f"127.0.0.1:{ports['auth']}",
        "PARLEY_STORAGE_ADDR": f"127.0.0.1:{ports['storage']}",
        "PARLEY_REGISTRY_ADDR": f"127.0.0.1:{ports['patch-registry']}",
    }
    processes: list[asyncio.subprocess.Process] = []
    agent: NodeAgent | None = None
    platform: AgentPlatform | None = None
    try:
        for service in SERVICES_AS_PROCESSES:
            own = {"PARLEY_LISTEN_PORT": str(ports[service]), "PARLEY_INSTANCE_ID": f"{service}-1"}
            process = await _spawn(service, {**env, **own}, data_dir / "logs")
            processes.append(process)
            await _wait_healthy(pki, service, f"127.0.0.1:{ports[service]}", process)
        agent = NodeAgent(
            data_dir=data_dir / "agent",
            pki=pki,
            registry_address=env["PARLEY_REGISTRY_ADDR"],
            environment={k: v for k, v in env.items() if k.startswith("PARLEY_")},
            timeouts=AgentTimeouts(healthy_s=START_TIMEOUT_S, reporting_s=60, drain_s=60, poll_s=0.3),
        )
        door = await agent.open_front_door("messaging")
        for _ in range(MESSAGING_INSTANCES):  # one after the other, as the agent starts a service
            await agent.start_serving("messaging", "0.1.0")
        gateway_env = {
            **env,
            "PARLEY_LISTEN_PORT": str(ports["gateway"]),
            "PARLEY_MESSAGING_ADDR": door.address,
            "PARLEY_INSTANCE_ID": "gateway-1",
        }
        gateway = await _spawn("gateway", gateway_env, data_dir / "logs")
        processes.append(gateway)
        await _wait_healthy(pki, "gateway", f"127.0.0.1:{ports['gateway']}", gateway)
        registry_channel = secure_channel(
            pki, identity=PLATFORM_USER, address=env["PARLEY_REGISTRY_ADDR"], peer="patch-registry"
        )
        platform = AgentPlatform(
            data_dir=data_dir,
            pki=pki,
            agent=agent,
            registry=patch_pb2_grpc.PatchServiceStub(registry_channel),
            gateway_address=f"127.0.0.1:{ports['gateway']}",
            signer=signer,
            processes=processes,
        )
        yield platform
        await registry_channel.close()
    finally:
        if platform is not None and platform.agent_task is not None:
            platform.agent_task.cancel()  # its passes are idempotent: stopping mid-pass is safe
            await asyncio.gather(platform.agent_task, return_exceptions=True)
        if agent is not None:
            await agent.stop()
        for process in reversed(processes):
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 30)
                except TimeoutError:
                    process.kill()
