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
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

import grpc
from parley.fleet.v1 import fleet_pb2, fleet_pb2_grpc
from parley.patch.v1 import patch_pb2, patch_pb2_grpc
from tuf.api.exceptions import DownloadError, RepositoryError

from parley_agent.gate_probes import GateProbes
from parley_agent.installer import (
    INSTALLED,
    NotThePublishedRelease,
    TufSource,
    fetch_release,
    install_version,
    installed_wheel,
)
from parley_agent.instances import AgentTimeouts, Door, Instance, InstanceHost, door_for
from parley_agent.progress import ProgressTeller
from parley_core.errors import NotFound
from parley_core.grpc_channel import secure_channel
from parley_core.jobs import every
from parley_core.pki import Pki, tooling_identity

__all__ = ["AgentTimeouts", "Door", "Instance", "NodeAgent", "door_for"]

log = logging.getLogger(__name__)
REGISTRY = "patch-registry"
# How often the fleet view is read for registry instances the agent does not know yet.
REGISTRIES_LOOKUP_S = 5.0


class NodeAgent(InstanceHost):
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
        # Every registry instance of the fleet, the preferred first (a joined host's own): the
        # agent follows the first that answers and moves on when it stops answering.
        addresses = [registry_address] if isinstance(registry_address, str) else list(registry_address)
        if not addresses:
            raise ValueError("a node agent needs the address of at least one patch registry")
        self.registry_addresses = addresses
        self.pki = pki
        self._channel = self._connect_registry(addresses[0])
        self._registries_looked_up = -REGISTRIES_LOOKUP_S  # monotonic: when the fleet view was last read
        super().__init__(
            pki=pki, environment=environment, fleet=self.fleet, log_dir=log_dir or data_dir / "logs", timeouts=timeouts
        )
        self.data_dir = data_dir
        self.host = host or socket.gethostname()  # named in the registry's audit of what this agent did
        # Where roll-out steps and verdicts are told as they happen (`parley up` prints them).
        self.announce = announce or (lambda line: log.info("%s", line))
        # Warnings go the same way when someone follows the lines (else they lose `parley up`'s prefix).
        self.warn = announce or (lambda line: log.warning("%s", line))
        self.progress = ProgressTeller(announce=self.announce, warn=self.warn, usernames=usernames)
        self.probes = GateProbes(
            pki=pki, environment=self.environment, data_dir=data_dir, host=self.host, warn=self.warn
        )

    def _connect_registry(self, address: str) -> grpc.aio.Channel:
        # The platform identity on the first host, a joined host's node-agent certificate elsewhere.
        identity = tooling_identity(self.pki.directory)
        channel = secure_channel(self.pki, identity=identity, address=address, peer="patch-registry")
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

    async def _learn_registries(self) -> None:
        """Adds every live registry instance the fleet view shows (their heartbeats name their
        front doors) to the ones to follow when this one stops answering: a host without a
        registry of its own was given only the first host's, and joined hosts' come later."""
        now = asyncio.get_running_loop().time()
        if now - self._registries_looked_up < REGISTRIES_LOOKUP_S:
            return
        self._registries_looked_up = now
        listed = await self.fleet.ListInstances(fleet_pb2.ListInstancesRequest(), timeout=10.0)
        for status in listed.instances:
            beat = status.last_heartbeat
            known = beat.address in self.registry_addresses
            if beat.service == REGISTRY and beat.address and not status.stale and not known:
                self.registry_addresses.append(beat.address)
                self.announce(f"registry at {beat.address} (host {beat.host}) known; followed if this one is lost")

    async def _next_registry(self, why: str) -> None:
        """The registry followed so far is gone (its host lost): on to the next instance's address."""
        if len(self.registry_addresses) < 2:
            return
        at = self.registry_addresses.index(self.registry_address)
        address = self.registry_addresses[(at + 1) % len(self.registry_addresses)]
        self.warn(f"registry at {self.registry_address} not reachable ({why}); following the one at {address}")
        old, self._channel = self._channel, self._connect_registry(address)
        await old.close()

    async def stop(self, order: Sequence[str] = ()) -> list[Instance]:
        """Drains every instance, service by service in `order` (then the rest); returns them as stopped."""
        self._stop.set()
        await self.probes.stop()
        stopped = await super().stop(order)
        await self._channel.close()
        return stopped

    async def _tell_progress(self, rollout: patch_pb2.Rollout) -> None:
        await self.progress.tell(rollout)

    # ---- roll-out steps -----------------------------------------------------------------------

    async def _source(self) -> TufSource:
        repo = await self.registry.TufRepository(patch_pb2.TufRepositoryRequest(), timeout=10.0)
        return TufSource(repo.metadata_url, repo.targets_url, repo.trusted_root)

    async def _install(self, rollout: patch_pb2.Rollout) -> Path:
        source = await self._source()
        wheel, custom = await asyncio.to_thread(
            partial(fetch_release, sha256=rollout.target_sha256), source, rollout.target_path, self.data_dir / "tuf"
        )
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

    async def verify_installed(self, service: str, version: str, target_path: str, sha256: str) -> str | None:
        """None if the wheel `service` `version` runs from is, byte for byte, the signed release at
        `target_path` (fetched through TUF, its sha256 the one the registry recorded); else what is wrong."""
        wheel = installed_wheel(self.env_dir(service, version))
        if wheel is None:
            return f"{service} {version} is not installed on {self.host}"
        try:
            source = await self._source()
            released, custom = await asyncio.to_thread(
                partial(fetch_release, sha256=sha256), source, target_path, self.data_dir / "tuf"
            )
        except (RepositoryError, DownloadError, NotFound, NotThePublishedRelease, OSError) as error:
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
        with contextlib.suppress(grpc.aio.AioRpcError):  # looked up again on a later pass
            await self._learn_registries()
        active = set()
        for rollout in response.rollouts:
            if rollout.state not in ("done", "rolled_back"):
                active.add(rollout.rollout_id)
                await self._tell_progress(rollout)
                await self._step_logged(rollout)
            else:
                await self.progress.finish(rollout)
        for instance in self.instances.values():
            if instance.rollout_id and instance.rollout_id not in active:
                instance.rollout_id = ""  # its roll-out finished: an ordinary instance now
        self.probes.pending = {
            s.new_instance: s.weight
            for r in response.rollouts
            if r.rollout_id in active
            for s in r.steps
            if s.gate == "pending" and s.new_instance
        }
        self.probes.start(self.instances)
