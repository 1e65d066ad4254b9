"""The node agent: the hands of a roll-out on one host; the registry is the brain.

It runs the host's instances of the services it manages, each behind a FrontDoor (the stable
address callers know), or for the gateway on a SharedPort (the client address, which its
instances listen on themselves so that they see each client's real address). It asks the
registry what the current step of each roll-out is and does it: for a new step, fetch the
release through TUF, install it beside the running version, start the new instance, wait until
it is healthy and in the registry's fleet view, put it behind the front door and report it;
once the registry's gate passed, take the old instance out of the front door, let it drain
(SIGTERM: health NOT_SERVING, in-flight calls finish) and report it. On rollback it brings the
old version back before stopping the new one, so the number of healthy instances never drops
below what it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import grpc
from parley.fleet.v1 import fleet_pb2, fleet_pb2_grpc
from parley.patch.v1 import patch_pb2, patch_pb2_grpc
from tuf.api.exceptions import DownloadError, RepositoryError

from parley_agent.front_door import FrontDoor
from parley_agent.health import is_serving
from parley_agent.installer import (
    INSTALLED,
    TufSource,
    base_python,
    fetch_release,
    install_version,
    installed_wheel,
)
from parley_agent.probe import PROBES, MessagingProbe, ProbeUnavailable
from parley_agent.shared_port import SharedPort
from parley_core.errors import NotFound
from parley_core.grpc_channel import secure_channel
from parley_core.jobs import every
from parley_core.net import free_port, host_address
from parley_core.pki import Pki
from parley_core.topology import PLATFORM_USER

log = logging.getLogger(__name__)

# Services whose callers are clients, not other services: their instances share the client port
# themselves (parley_agent.shared_port) instead of sitting behind a proxy, so they see each
# client's real address. Other services' callers are named by their certificates.
SHARED_PORT_SERVICES = frozenset({"gateway"})
Door = FrontDoor | SharedPort
# Synthetic transactions per new instance while its gate is pending, and how many run at once.
PROBE_TRANSACTIONS = 30
PROBE_WORKERS = 3


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

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


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


class NodeAgent:
    def __init__(
        self,
        *,
        data_dir: Path,
        pki: Pki,
        registry_address: str | Sequence[str],
        environment: Mapping[str, str],
        timeouts: AgentTimeouts | None = None,
        log_dir: Path | None = None,
        host: str = "",
        announce: Callable[[str], None] | None = None,
        usernames: Callable[[Sequence[str]], Awaitable[dict[str, str]]] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.host = host or socket.gethostname()  # named in the registry's audit of what this agent did
        # Where roll-out steps and verdicts are told as they happen (`parley up` prints them).
        self.announce = announce or (lambda line: log.info("%s", line))
        # Warnings go the same way when someone follows the lines (else they lose `parley up`'s prefix).
        self.warn = announce or (lambda line: log.warning("%s", line))
        # The names of the people a roll-out records by id (`parley up` asks storage's archive).
        self._usernames = usernames
        self._names: dict[str, str] = {}
        self._told: dict[str, list[str]] = {}
        self._probes: dict[str, MessagingProbe] = {}
        self._probing: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._gate_pending: dict[str, int] = {}  # new instance -> the share its pending gate phase is on
        self.pki = pki
        self.environment = dict(environment)  # PARLEY_* settings every instance gets
        self.timeouts = timeouts or AgentTimeouts()
        self.front_doors: dict[str, Door] = {}
        self.instances: dict[str, Instance] = {}
        # Every registry instance of the fleet, the preferred first (a joined host's own): the
        # agent follows the first that answers and moves on when it stops answering.
        addresses = [registry_address] if isinstance(registry_address, str) else list(registry_address)
        if not addresses:
            raise ValueError("a node agent needs the address of at least one patch registry")
        self.registry_addresses = addresses
        self._channel = self._connect_registry(addresses[0])
        self.log_dir = log_dir or data_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._stop = asyncio.Event()

    def _connect_registry(self, address: str) -> grpc.aio.Channel:
        channel = secure_channel(self.pki, identity=PLATFORM_USER, address=address, peer="patch-registry")
        self.registry = patch_pb2_grpc.PatchServiceStub(channel)
        self.fleet = fleet_pb2_grpc.FleetServiceStub(channel)
        self.registry_address = address
        return channel

    async def prefer_registry(self, address: str) -> None:
        """Follow the registry at `address` first from now on (its host's own: its TUF server's
        address is one this host reaches), the others staying fallbacks."""
        self.registry_addresses = [address, *(a for a in self.registry_addresses if a != address)]
        if self.registry_address != address:
            old, self._channel = self._channel, self._connect_registry(address)
            await old.close()

    async def _next_registry(self, why: str) -> None:
        """The registry followed so far is gone (its host lost): on to the next instance's address."""
        if len(self.registry_addresses) < 2:
            return
        at = self.registry_addresses.index(self.registry_address)
        address = self.registry_addresses[(at + 1) % len(self.registry_addresses)]
        self.warn(f"registry at {self.registry_address} not reachable ({why}); following the one at {address}")
        old, self._channel = self._channel, self._connect_registry(address)
        await old.close()

    # ---- instances ----------------------------------------------------------------------------

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
        instance = Instance(
            service=service,
            version=version,
            # One NATS subject token: no dots (heartbeats go to ...heartbeat.<service>.<instance_id>).
            instance_id=f"{service}-v{re.sub(r'[^A-Za-z0-9_-]', '_', version)}-{uuid.uuid4().hex[:6]}",
            port=free_port(),
            python=python or base_python(),
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
            "PARLEY_INSTANCE_ID": instance.instance_id,
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
            if instance.log_file is not None:
                instance.log_file.close()
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
        if instance.log_file is not None:
            instance.log_file.close()

    async def stop(self, order: Sequence[str] = ()) -> list[Instance]:
        """Drains every instance, service by service in `order` (then the rest); returns them as stopped."""
        self._stop.set()
        for task in self._probing.values():
            task.cancel()
        await asyncio.gather(*self._probing.values(), return_exceptions=True)
        rank = {service: n for n, service in enumerate(order)}
        stopped = sorted(self.instances.values(), key=lambda i: rank.get(i.service, len(rank)))
        for instance in stopped:
            await self.drain(instance.instance_id)
        for door in self.front_doors.values():
            await door.stop()
        await self._channel.close()
        return stopped

    # ---- roll-out steps -----------------------------------------------------------------------

    async def _source(self) -> TufSource:
        repo = await self.registry.TufRepository(patch_pb2.TufRepositoryRequest(), timeout=10.0)
        return TufSource(repo.metadata_url, repo.targets_url, repo.trusted_root)

    async def _install(self, rollout: patch_pb2.Rollout) -> Path:
        source = await self._source()
        wheel, custom = await asyncio.to_thread(fetch_release, source, rollout.target_path, self.data_dir / "tuf")
        if custom.get("version") != rollout.to_version or custom.get("service") != rollout.service:
            raise RuntimeError(
                f"{rollout.target_path} is signed as {custom}, not {rollout.service} {rollout.to_version}"
            )
        return await self.install(rollout.service, rollout.to_version, wheel)

    async def install(self, service: str, version: str, wheel: Path) -> Path:
        """`wheel` installed as `service` `version` on this host (once); returns the python that runs it."""
        return await install_version(wheel, self.env_dir(service, version))

    def env_dir(self, service: str, version: str) -> Path:
        return self.data_dir / "envs" / f"{service}-{version}"

    def installed_python(self, service: str, version: str) -> Path | None:
        """The python of a version this agent installed earlier (a roll-out's or a base release), if it did."""
        env_dir = self.env_dir(service, version)
        return env_dir / "bin" / "python" if (env_dir / INSTALLED).exists() else None

    async def verify_installed(self, service: str, version: str, target_path: str) -> str | None:
        """None if the wheel `service` `version` runs from is, byte for byte, the signed release at
        `target_path` (fetched through TUF); else what is wrong."""
        wheel = installed_wheel(self.env_dir(service, version))
        if wheel is None:
            return f"{service} {version} is not installed on {self.host}"
        try:
            source = await self._source()
            released, custom = await asyncio.to_thread(fetch_release, source, target_path, self.data_dir / "tuf")
        except (RepositoryError, DownloadError, NotFound, OSError) as error:
            return f"{target_path} could not be fetched through TUF: {error}"
        if (custom.get("service"), custom.get("version")) != (service, version):
            return f"{target_path} is signed as {custom}, not {service} {version}"
        if released.read_bytes() != wheel.read_bytes():
            return f"{service} {version} runs {wheel}, which is not the signed release {target_path}"
        return None

    async def step(self, rollout: patch_pb2.Rollout) -> bool:
        """Does what the roll-out's current step needs from this host; True if it did something."""
        if rollout.service not in self.front_doors:
            return False
        if rollout.state == "rolling_back":
            await self._roll_back(rollout)
            return True
        if rollout.state not in ("canary", "production") or not rollout.steps:
            return False
        step = rollout.steps[-1]
        if step.replaces_instance not in self.instances:
            return False
        door = self.front_doors[rollout.service]
        if not step.new_instance:
            python = await self._install(rollout)
            instance = await self.start_instance(rollout.service, rollout.to_version, python, share=step.weight)
            instance.rollout_id = rollout.rollout_id
            if await self.wait_ready(instance):
                door.set_share(instance.address, step.weight)  # a small share of callers first
                self._serve(instance)
            elif instance.process is not None and instance.process.returncode is not None:
                await self._report_exit(rollout, instance)  # a crash at start: rolled back at once
                return True
            # Reported either way: a new instance that never became ready fails the gate.
            await self.registry.ReportInstanceStarted(
                patch_pb2.ReportInstanceRequest(
                    rollout_id=rollout.rollout_id,
                    instance_id=instance.instance_id,
                    version=rollout.to_version,
                    host=self.host,
                ),
                timeout=10.0,
            )
            return True
        new = self.instances.get(step.new_instance)
        if new is not None and new.serving:
            # The share of the phase the registry's gate is on; all of it once the gate passed.
            door.set_share(new.address, step.weight if step.gate == "pending" else 100)
        crashed = [
            i
            for s in rollout.steps
            if (i := self.instances.get(s.new_instance)) is not None
            and i.process is not None
            and i.process.returncode is not None
        ]
        if crashed:
            await self._report_exit(rollout, crashed[0])
            return True
        if step.gate == "passed" and not step.drained:
            await self.drain(step.replaces_instance)
            await self.registry.ReportInstanceDrained(
                patch_pb2.ReportInstanceRequest(
                    rollout_id=rollout.rollout_id, instance_id=step.replaces_instance, host=self.host
                ),
                timeout=10.0,
            )
            return True
        return False

    async def _report_exit(self, rollout: patch_pb2.Rollout, instance: Instance) -> None:
        """The exit code and the instance's last log lines, so that `patch status` shows why."""
        assert instance.process is not None
        assert instance.process.returncode is not None
        self.warn(
            f"roll-out {rollout.rollout_id}: {instance.instance_id} exited with "
            f"{instance.process.returncode}; reporting it"
        )
        await self.registry.ReportInstanceExited(
            patch_pb2.ReportInstanceExitRequest(
                rollout_id=rollout.rollout_id,
                instance_id=instance.instance_id,
                exit_code=instance.process.returncode,
                last_log_lines=self.last_log_lines(instance),
                host=self.host,
            ),
            timeout=10.0,
        )

    async def _roll_back(self, rollout: patch_pb2.Rollout) -> None:
        """The old version back on every replaced instance first, then the new ones out."""
        for step in rollout.steps:
            if step.drained:
                python = self.installed_python(rollout.service, rollout.from_version)
                await self.start_serving(rollout.service, rollout.from_version, python)
        for step in rollout.steps:
            if step.new_instance:
                await self.drain(step.new_instance, failed=step.gate != "passed")
        await self.registry.ReportRolledBack(
            patch_pb2.GetRolloutRequest(rollout_id=rollout.rollout_id, host=self.host), timeout=10.0
        )

    async def _step_logged(self, rollout: patch_pb2.Rollout) -> None:
        """A failed step is retried on the next pass; the registry's gate timeout bounds it."""
        try:
            await self.step(rollout)
        except Exception:
            log.exception("roll-out %s: step failed on this host; retrying", rollout.rollout_id)

    def _start_probes(self) -> None:
        """Synthetic transactions through each new instance whose gate is pending (once a phase)."""
        for instance_id, weight in self._gate_pending.items():
            instance = self.instances.get(instance_id)
            if instance is None or not instance.serving or instance.service not in PROBES:
                continue
            if (instance_id, weight) not in self._probing:
                self._probing[(instance_id, weight)] = asyncio.create_task(self._probe(instance, weight))

    async def _probe(self, instance: Instance, weight: int) -> None:
        probe = self._probes.get(instance.service)
        if probe is None:
            probe = self._probes[instance.service] = PROBES[instance.service](
                pki=self.pki,
                environment=self.environment,
                state_file=self.data_dir / f"probe-{instance.service}.json",
                host=self.host,
            )
        budget = iter(range(PROBE_TRANSACTIONS))

        async def worker() -> int:
            done = 0
            while self._gate_pending.get(instance.instance_id) == weight and next(budget, None) is not None:
                if instance.process is None or instance.process.returncode is not None:
                    break
                done += await probe.transaction(instance.address)
            return done

        try:
            succeeded = sum(await asyncio.gather(*(worker() for _ in range(PROBE_WORKERS))))
        except ProbeUnavailable as error:
            self.warn(f"no synthetic calls through {instance.instance_id}: {error}")
            return
        log.info("synthetic transactions through %s: %d succeeded", instance.instance_id, succeeded)

    async def _tell_progress(self, rollout: patch_pb2.Rollout) -> None:
        """Each new step, verdict and state of a roll-out, once, in order; people by name where known.

        What was told is kept as lines with ids, so a name found later does not tell a line again."""
        lines = rollout_progress(rollout)
        told = self._told.setdefault(rollout.rollout_id, [])
        title = (
            f"roll-out {rollout.rollout_id} ({rollout.service} {rollout.from_version or '?'} -> {rollout.to_version})"
        )
        start = len(told) if lines[: len(told)] == told else 0
        new = [i for i in range(start, len(lines)) if lines[i] not in told]
        if new:
            named = rollout_progress(rollout, await self._people(rollout))
            for i in new:
                self.announce(f"{title}: {named[i]}")
        self._told[rollout.rollout_id] = lines

    async def _people(self, rollout: patch_pb2.Rollout) -> dict[str, str]:
        """Names of who planned and approved, asked once each (a failed lookup leaves the id)."""
        unknown = [u for u in (rollout.planned_by, rollout.approved_by) if u and u not in self._names]
        if unknown and self._usernames is not None:
            try:
                self._names.update(await self._usernames(unknown))
            except Exception as error:  # a courtesy: the lines are told with ids rather than not at all
                self.warn(f"no names for {', '.join(unknown)}: {error!r}")
        return self._names

    async def run(self) -> None:
        """Follows the registry until stopped (`stop()`): one pass per poll interval, each idempotent."""
        passes = every(self.timeouts.poll_s, self._follow_rollouts, name="node-agent", grace=0.0)
        passes.start()
        try:
            await self._stop.wait()
        finally:  # stopped, or this task cancelled: its passes are idempotent, stopping mid-pass is safe
            await passes.stop()

    async def _follow_rollouts(self) -> None:
        try:
            response = await self.registry.ListRollouts(patch_pb2.ListRolloutsRequest(), timeout=10.0)
        except grpc.aio.AioRpcError as error:
            self.warn(f"registry not reachable: {error.details()}")
            if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                await self._next_registry(error.code().name)
            return
        active = set()
        for rollout in response.rollouts:
            if rollout.state not in ("done", "rolled_back"):
                active.add(rollout.rollout_id)
                await self._tell_progress(rollout)
                await self._step_logged(rollout)
            elif rollout.rollout_id in self._told:
                await self._tell_progress(rollout)  # its last lines (the verdict, done or rolled back)
                del self._told[rollout.rollout_id]
        for instance in self.instances.values():
            if instance.rollout_id and instance.rollout_id not in active:
                instance.rollout_id = ""  # its roll-out finished: an ordinary instance now
        self._gate_pending = {
            s.new_instance: s.weight
            for r in response.rollouts
            if r.rollout_id in active
            for s in r.steps
            if s.gate == "pending" and s.new_instance
        }
        self._start_probes()


def rollout_progress(rollout: patch_pb2.Rollout, names: Mapping[str, str] | None = None) -> list[str]:
    """What has happened to a roll-out so far, one line per step, verdict and state (people by
    their names where `names` has them, else by id)."""
    names = names or {}
    planner = names.get(rollout.planned_by, rollout.planned_by)
    lines = [f"planned by {planner}" + (f" ({rollout.reason})" if rollout.reason else "")]
    if rollout.approved_by:
        lines.append(f"approved by {names.get(rollout.approved_by, rollout.approved_by)}")
    verdicts = [a.detail for a in rollout.audit if a.event == "GateEvaluated"]
    for index, step in enumerate(rollout.steps):
        where = "canary" if index == 0 else f"step {index}"
        if step.new_instance:
            lines.append(f"{where}: {step.new_instance} started beside {step.replaces_instance}")
        if step.exited:
            lines.append(f"{where}: {step.new_instance} {step.exited}")
        for detail in (d for d in verdicts if d.startswith(f"step {index} ")):
            lines.append(f"{where}: gate {detail}")
        if step.drained:
            lines.append(f"{where}: {step.replaces_instance} drained")
    if rollout.state in ("rolling_back", "rolled_back"):
        lines.append(f"rolling back: {rollout.rollback_reason}")
    if rollout.state in ("done", "rolled_back"):
        lines.append(rollout.state.replace("_", " "))
    return lines
