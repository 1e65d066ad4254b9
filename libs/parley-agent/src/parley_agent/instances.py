"""A host's service instances, each a process behind its service's door: started from a given
python, watched until healthy (and in the registry's fleet view), put behind the door, restarted
after a crash, drained and stopped. The node agent (parley_agent.node_agent) adds the roll-out
steps on top.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import grpc
from parley.fleet.v1 import fleet_pb2, fleet_pb2_grpc

from parley_agent.front_door import FrontDoor
from parley_agent.health import is_serving
from parley_agent.installer import base_python
from parley_agent.shared_port import HELD_LISTEN_PORT_ENV, SharedPort, claim
from parley_core.net import host_address
from parley_core.pki import Pki

# Services whose callers are clients, not other services: their instances share the client port
# themselves (parley_agent.shared_port) instead of sitting behind a proxy, so they see each
# client's real address. Other services' callers are named by their certificates.
SHARED_PORT_SERVICES = frozenset({"gateway"})
Door = FrontDoor | SharedPort


def door_for(service: str, *, port: int = 0) -> Door:
    """The stable address of `service` on this host (not open yet: `await door.start()`)."""
    host = host_address()  # where other hosts reach this service
    if service in SHARED_PORT_SERVICES:
        return SharedPort(service, host=host, port=port)
    return FrontDoor(service, host=host, port=port)


@dataclass
class Instance:
    service: str
    version: str
    instance_id: str
    port: int
    python: Path
    process: asyncio.subprocess.Process | None = None
    log_file: TextIO | None = field(default=None, repr=False)
    # Has been behind its front door: kept running (a starting or failed canary is not).
    serving: bool = False
    # Where this instance's lines begin in the service's log.
    log_offset: int = 0
    # The roll-out whose new instance this is, while that roll-out runs: its exit is reported to
    # the registry (which rolls back), not restarted by a supervisor.
    rollout_id: str = ""
    # The agent's hold on `port` (bound, never listening) for the instance's life, restarts
    # included: a port merely found free can be taken by any connection's source port before
    # the instance listens on it (it listens only after its replay), and a bound port is not.
    port_claim: socket.socket | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def release(self) -> None:
        """For good: the port's hold and the log file."""
        if self.port_claim is not None:
            self.port_claim.close()
            self.port_claim = None
        if self.log_file is not None:
            self.log_file.close()


@dataclass(frozen=True)
class AgentTimeouts:
    healthy_s: float = 120.0  # start-up of a new instance, including its replay of the streams
    reporting_s: float = 60.0
    drain_s: float = 60.0
    poll_s: float = 0.5
    # Instances recycle their connections this often; before an instance is stopped, callers'
    # connections have moved to the others (gRPC adds up to 10% jitter, hence the margin).
    connection_age_s: float = 5.0
    # Callers of these hold live streams for as long as they like (the gateway's Subscribe):
    # recycling their connections would cut the streams, so their instances keep connections
    # and a drain relies on the server's graceful stop alone.
    streaming_services: frozenset[str] = frozenset({"gateway"})

    def recycles_connections(self, service: str) -> bool:
        return self.connection_age_s > 0 and service not in self.streaming_services

    def connections_moved_s(self, service: str) -> float:
        return self.connection_age_s * 1.2 + 1.0 if self.recycles_connections(service) else 0.0


class InstanceHost:
    """The instances of the services this host runs, by id, and each service's door."""

    def __init__(
        self,
        *,
        pki: Pki,
        environment: Mapping[str, str],
        fleet: fleet_pb2_grpc.FleetServiceAsyncStub,
        log_dir: Path,
        timeouts: AgentTimeouts | None = None,
    ) -> None:
        self.pki = pki
        self.environment = dict(environment)  # PARLEY_* settings every instance gets
        self.fleet = fleet  # the registry's fleet view: a new instance is ready once it reports there
        self.timeouts = timeouts or AgentTimeouts()
        self.front_doors: dict[str, Door] = {}
        self.instances: dict[str, Instance] = {}
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._stop = asyncio.Event()

    async def open_front_door(self, service: str, port: int = 0) -> Door:
        door = await door_for(service, port=port).start()
        self.front_doors[service] = door
        return door

    def log_path(self, service: str) -> Path:
        """One log per service: its instances, old and new, write to it in turn (each line names its instance)."""
        return self.log_dir / f"{service}.log"

    def instances_of(self, service: str) -> list[Instance]:
        return [i for i in self.instances.values() if i.service == service]

    async def start_instance(
        self, service: str, version: str, python: Path | None = None, *, share: int = 100
    ) -> Instance:
        """`share`: the percent of the service's new connections it takes once serving; given
        before it starts, for an instance that listens on a shared port from its start."""
        port_claim = claim("127.0.0.1", 0)
        instance = Instance(
            service=service,
            version=version,
            # One NATS subject token: no dots (heartbeats go to ...heartbeat.<service>.<instance_id>).
            instance_id=f"{service}-v{re.sub(r'[^A-Za-z0-9_-]', '_', version)}-{uuid.uuid4().hex[:6]}",
            port=port_claim.getsockname()[1],
            python=python or base_python(),
            port_claim=port_claim,
        )
        if share < 100:
            self.front_doors[service].set_share(instance.address, share)
        await self._spawn(instance)
        self.instances[instance.instance_id] = instance
        return instance

    async def _spawn(self, instance: Instance) -> None:
        if instance.log_file is None:
            path = self.log_path(instance.service)
            instance.log_file = open(path, "a", buffering=1)  # noqa: SIM115, ASYNC230 - kept for the process's life
            os.chmod(path, 0o600)
        instance.log_offset = instance.log_file.tell()
        env = {
            **os.environ,
            **self.environment,
            **self.front_doors[instance.service].instance_environment(instance.address),
            "PARLEY_LISTEN_HOST": "127.0.0.1",
            "PARLEY_LISTEN_PORT": str(instance.port),
            HELD_LISTEN_PORT_ENV: "true",
            "PARLEY_INSTANCE_ID": instance.instance_id,
            # What its heartbeats name: other hosts' agents find a registry there (NodeAgent).
            "PARLEY_FRONT_DOOR_ADDRESS": self.front_doors[instance.service].address,
        }
        if self.timeouts.recycles_connections(instance.service):
            env["PARLEY_MAX_CONNECTION_AGE_SECONDS"] = str(self.timeouts.connection_age_s)
        instance.process = await asyncio.create_subprocess_exec(
            str(instance.python),
            "-I",  # isolated: no PYTHONPATH or user site can put other code before the release's
            "-m",
            "parley_" + instance.service.replace("-", "_"),
            env=env,
            stdout=instance.log_file,
            stderr=instance.log_file,
            start_new_session=True,
        )

    async def _healthy(self, instance: Instance) -> bool:
        return await is_serving(self.pki, service=instance.service, address=instance.address)

    async def _reporting(self, instance: Instance) -> bool:
        try:
            response = await self.fleet.ListInstances(fleet_pb2.ListInstancesRequest(), timeout=5.0)
        except grpc.aio.AioRpcError:
            return False  # the registry restarting: asked again on the next poll
        return any(
            i.last_heartbeat.instance_id == instance.instance_id
            and not i.stale
            and i.last_heartbeat.health == "SERVING"
            for i in response.instances
        )

    async def wait_ready(self, instance: Instance, *, in_fleet: bool = True) -> bool:
        """Healthy and (if `in_fleet`) in the registry's fleet view; False if it died or took too long.

        `in_fleet=False` is for starting a platform, when the registry may not run yet.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeouts.healthy_s
        while not await self._healthy(instance):
            if instance.process is None or instance.process.returncode is not None or loop.time() > deadline:
                return False
            await asyncio.sleep(self.timeouts.poll_s)
        if not in_fleet:
            return True
        deadline = loop.time() + self.timeouts.reporting_s
        while not await self._reporting(instance):
            if instance.process is None or instance.process.returncode is not None or loop.time() > deadline:
                return False
            await asyncio.sleep(self.timeouts.poll_s)
        return True

    def _serve(self, instance: Instance) -> None:
        self.front_doors[instance.service].add(instance.address)
        instance.serving = True

    async def start_serving(
        self, service: str, version: str, python: Path | None = None, *, in_fleet: bool = True
    ) -> Instance:
        """Starts an instance and, once ready, puts it behind the service's front door."""
        instance = await self.start_instance(service, version, python)
        if not await self.wait_ready(instance, in_fleet=in_fleet):
            code = instance.process.returncode if instance.process else None
            why = f"exited with {code}" if code is not None else "is still not ready"
            raise RuntimeError(f"{instance.instance_id} did not become healthy ({why}); see {self.log_path(service)}")
        self._serve(instance)
        return instance

    def exited(self) -> list[Instance]:
        """Serving instances whose process has ended (crashed or stopped by someone else); a
        roll-out's new instance is the roll-out's business (reported, then rolled back)."""
        return [
            i
            for i in self.instances.values()
            if i.serving and not i.rollout_id and i.process and i.process.returncode is not None
        ]

    def last_log_lines(self, instance: Instance, lines: int = 20) -> list[str]:
        """The end of what this instance wrote to its service's log (other instances' lines left out)."""
        try:
            with self.log_path(instance.service).open("rb") as log_file:
                log_file.seek(instance.log_offset)
                text = log_file.read().decode(errors="replace")
        except OSError:
            return []
        own = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError, AttributeError):
                if json.loads(line).get("instance", instance.instance_id) != instance.instance_id:
                    continue
            own.append(line)
        return own[-lines:]

    async def restart(self, instance_id: str) -> bool:
        """The same instance (id, port, version) started again after its process ended.

        Keeping the id keeps roll-outs that name it valid. Out of the front door until healthy;
        False if it did not get there (it stays `serving`, so a new crash is noticed again).
        """
        instance = self.instances[instance_id]
        self.front_doors[instance.service].remove(instance.address)
        await self._spawn(instance)
        if not await self.wait_ready(instance, in_fleet=False):
            return False
        self._serve(instance)
        return True

    def forget(self, instance_id: str) -> Instance | None:
        """An instance that stopped for good: out of the front door and of this agent's books."""
        instance = self.instances.pop(instance_id, None)
        if instance is not None:
            self.front_doors[instance.service].remove(instance.address)
            instance.release()
        return instance

    async def drain(self, instance_id: str, *, failed: bool = False) -> None:
        """Out of the front door, then callers' connections move away, then SIGTERM.

        Stopping a gRPC server cancels calls that raced its shutdown (grpc/grpc#41785), so the
        instance is stopped only after its connections aged out through graceful GOAWAYs and
        reconnected through the front door to the other instances. A `failed` instance (its gate
        failed) is stopped at once: every call its connections still bring it is one more failure.
        """
        instance = self.instances.pop(instance_id, None)
        if instance is None:
            return
        self.front_doors[instance.service].remove(instance.address)
        process = instance.process
        if process is not None and process.returncode is None and not self._stop.is_set() and not failed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), self.timeouts.connections_moved_s(instance.service))
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), self.timeouts.drain_s)
            except TimeoutError:
                process.kill()
                await process.wait()
        instance.release()

    async def stop(self, order: Sequence[str] = ()) -> list[Instance]:
        """Drains every instance, service by service in `order` (then the rest); returns them as stopped."""
        self._stop.set()
        rank = {service: n for n, service in enumerate(order)}
        stopped = sorted(self.instances.values(), key=lambda i: rank.get(i.service, len(rank)))
        for instance in stopped:
            await self.drain(instance.instance_id)
        for door in self.front_doors.values():
            await door.stop()
        return stopped
