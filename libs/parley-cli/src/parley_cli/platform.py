"""`parley up`: nats-server (or a JetStream cluster) and every service, run by the node agent, supervised.

First start creates the data folder (0700), the local CA and certificates, and the NATS users;
later starts reuse them, so messages and accounts survive a restart.

Every service runs behind the agent's front door, the address the other services are told; the
gateway's instances share the client port themselves, so they see each client's real address.
The agent follows the patch registry's roll-outs, so a release approved with `parley patch`
replaces the running version without a restart of the platform.
The version each service ended on, and every front door's port, is kept in the state file and
used again next time (parley_cli.platform_doors). The broker is parley_cli.platform_nats, the
releases parley_cli.platform_releases, the command line parley_cli.platform_run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from nats.aio.client import Client

from parley_agent import AgentTimeouts, Door, Instance, NodeAgent
from parley_agent.front_door import FrontDoor
from parley_agent.shared_port import requests_migrate
from parley_cli.outage_log import OncePerOutage
from parley_cli.platform_doors import claim_web_port, open_client_port, open_service_door
from parley_cli.platform_hints import tell_cli_steps, tell_how_to_connect
from parley_cli.platform_nats import PlatformNats
from parley_cli.platform_releases import install_base_releases, publish_base_releases, start_service
from parley_cli.platform_reseed import reseed_restored_log
from parley_cli.report_schedule import report_every, report_job
from parley_cli.restart_budget import RESTART_LIMIT, RESTART_RESET_AFTER_S, RestartBudget
from parley_cli.state import mark_stopped, running_state, write_running_state, write_starting_state
from parley_cli.terminal import shown
from parley_cli.usernames import ArchiveUsernames
from parley_core.bus import EventBus
from parley_core.config import PEER_ADDRESS_ENV, RESTORED_MARKER, STABLE_ADDRESS_ENV, Settings
from parley_core.database import SQLITE_ARCHIVE, location_of
from parley_core.files import ensure_private_dir
from parley_core.jobs import PeriodicJob, every
from parley_core.nats_connect import connect_nats
from parley_core.natsconf import ROUTE_USER, ensure_nats_passwords
from parley_core.net import host_address
from parley_core.pki import Pki, ensure_pki
from parley_core.topology import METRICS_SCRAPER, NATS_IDENTITY, PLATFORM_USER, SERVICES

# Start order; the gateway last, so its first client finds everything up. Stop in reverse.
START_ORDER = ("auth", "messaging", "storage", "patch-registry", "gateway")
# Services that may run several instances on one host (`parley up --instances`): the stateless
# front and the two whose instances settle races through the event log (expected sequences and
# claims). Storage's archive consumer and the registry's roll-out driver run once per platform.
SCALABLE = ("gateway", "messaging", "auth")
MAX_INSTANCES = 4  # on one host: more only splits the same cores further
# The built web app (web/dist) the gateway serves there; `make run` sets it.
WEB_ROOT_ENV = "PARLEY_WEB_ROOT"
HEALTH_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 20.0
SUPERVISE_INTERVAL_S = 0.5
STREAMS_READY_TIMEOUT_S = 60.0


class Platform:
    def __init__(
        self,
        data_dir: Path,
        *,
        gateway_port: int | None = None,
        web_port: int | None = None,
        nats_cluster: int = 1,
        instances: Mapping[str, int] | None = None,
        out: TextIO = sys.stdout,
    ) -> None:
        if nats_cluster != 1 and nats_cluster < 3:
            raise ValueError("a JetStream cluster needs at least 3 nodes to survive the loss of one")
        self.instances = dict.fromkeys(START_ORDER, 1) | dict(instances or {})
        self.data_dir = data_dir.resolve()
        self.requested_gateway_port = gateway_port
        self.requested_web_port = web_port
        self.nats_cluster = nats_cluster
        # PostgreSQL's URL (run_platform sets it from --database-url or the folder's record); "": SQLite.
        self.database_url = ""
        self.out: TextIO | None = out
        self.front_doors: dict[str, Door] = {}
        self.web_claim: socket.socket | None = None
        self.agent: NodeAgent | None = None
        self._stopping = asyncio.Event()
        self.nats = PlatformNats(
            self.data_dir, cluster=nats_cluster, say=self.say, on_change=self._record_state, stopping=self._stopping
        )
        self.pki: Pki | None = None
        self.restart_budget = RestartBudget()
        self._written_state: dict[str, Any] = {}
        self._agent_task: asyncio.Task[None] | None = None
        self._base_task: asyncio.Task[None] | None = None
        self._usernames: ArchiveUsernames | None = None
        self._reports: PeriodicJob | None = None
        self._supervisor: PeriodicJob | None = None
        # The platform's own NATS connection, and the consumer guard's, apart: every JetStream API
        # call's audit advisory (with its request body, up to max_payload) reaches the guard, and a
        # junk flood of them once had nats-server cut `parley up`'s one connection as a slow consumer.
        self._guard_nc: Client | None = None
        self._guard_watch_nc: Client | None = None
        self._warnings = OncePerOutage(self.say)  # on the root logger from start() to stop()

    def say(self, text: str) -> None:
        """Never raises: a terminal or pipe that went away (Ctrl-C on `make run | tee`) must not
        stop `parley up` half-way through stopping its services; later lines are dropped.
        One line whatever `text` holds: a roll-out's reason or a service's refusal is others' text."""
        if self.out is None:
            return
        try:
            print(f"[parley] {shown(text)}", file=self.out, flush=True)
        except (OSError, ValueError):  # BrokenPipeError is an OSError; ValueError: closed file
            self.out = None

    async def start(self) -> None:
        reports_every = report_every()  # a bad $PARLEY_REPORT_EVERY_HOURS fails here, before anything starts
        logging.getLogger().addHandler(self._warnings)
        # A new folder has no accounts yet (a restored one has its backup's); auth offers no cheap
        # "any account?" question, so the first-owner hint is shown on a new folder's first start only.
        new_folder = not (self.data_dir / "pki").exists() and not (self.data_dir / RESTORED_MARKER).exists()
        ensure_private_dir(self.data_dir)
        for sub in ("logs", "nats", "secrets", "agent"):
            ensure_private_dir(self.data_dir / sub)
        own = [host_address()]  # the certificates name the address other hosts reach this one at
        self.pki = ensure_pki(self.data_dir / "pki", [*SERVICES, NATS_IDENTITY, PLATFORM_USER, METRICS_SCRAPER], own)
        users = [*SERVICES, PLATFORM_USER, *([ROUTE_USER] if self.nats_cluster > 1 else [])]
        passwords = ensure_nats_passwords(self.data_dir / "secrets" / "nats-passwords.json", users)

        await self.nats.start(self.pki, passwords)
        self._write_starting_state()
        self.nats.watch()
        where = self.data_dir / "nats" / ("jetstream" if self.nats_cluster == 1 else "node*/jetstream")
        kind = "nats-server" if self.nats_cluster == 1 else f"{self.nats_cluster}-node JetStream cluster (replicas 3)"
        if len(self.nats.local_nodes()) < len(self.nats.nodes):
            kind += f", {len(self.nats.local_nodes())} node(s) on this host, the others on joined hosts,"
        self.say(f"{kind} with JetStream and TLS on {self.nats_url} (store: {where})")

        # The platform identity declares every stream once, before any service needs one.
        nc = self._guard_nc = await connect_nats(
            url=self.nats_url,
            user=PLATFORM_USER,
            password=passwords[PLATFORM_USER],
            ca_cert=self.pki.ca_cert,
            name="parley-up",
        )
        bus = EventBus(nc, service=PLATFORM_USER, producer="parley-up")
        settings = Settings()
        streams = settings.streams  # PARKED's bounds from PARLEY_PARKED_MAX_*, like the services'
        await bus.ensure_streams_when_ready(streams, replicas=self.replicas, timeout=STREAMS_READY_TIMEOUT_S)
        if (self.data_dir / RESTORED_MARKER).exists():
            await reseed_restored_log(
                self.data_dir,
                nats_url=self.nats_url,
                database_url=self.database_url,
                say=self.say,
                stopping=self._stopping,
            )
        self._guard_watch_nc = await connect_nats(
            url=self.nats_url,
            user=PLATFORM_USER,
            password=passwords[PLATFORM_USER],
            ca_cert=self.pki.ca_cert,
            name="parley-up-consumer-guard",
        )
        await self.nats.start_guard(nc, self._guard_watch_nc, settings.consumer_quota)

        self.say(f"archive: {self.archive_location}")
        self.web_claim = claim_web_port(self.data_dir, self.requested_web_port, self.say)
        # Every front door first: each service is told the others' addresses when it starts.
        for name in START_ORDER:
            self.front_doors[name] = await (
                open_client_port(self.data_dir, self.requested_gateway_port, self.say)
                if name == "gateway"
                else open_service_door(self.data_dir, name)
            )
        if requests_migrate() is False:
            self.say(
                "note: net.ipv4.tcp_migrate_req is 0, so a client connecting in the instant an old gateway "
                "instance stops listening (a roll-out) is reset and reconnects; "
                "`sysctl -w net.ipv4.tcp_migrate_req=1` hands such connections to another instance"
            )
        self._usernames = ArchiveUsernames(self.pki, self.front_doors["storage"].address)
        agent = self.agent = NodeAgent(
            data_dir=self.data_dir / "agent",
            pki=self.pki,
            registry_address=self.front_doors["patch-registry"].address,
            environment=self._environment(),
            timeouts=AgentTimeouts(healthy_s=HEALTH_TIMEOUT_S, drain_s=DRAIN_TIMEOUT_S),
            log_dir=self.data_dir / "logs",
            announce=self.say,
            usernames=self._usernames,
        )
        agent.front_doors.update(self.front_doors)
        installed = await install_base_releases(agent, START_ORDER, self.say)
        for name in START_ORDER:
            for _ in range(self.instances[name]):
                await start_service(agent, self.data_dir, name, installed.get(name), self.say)
        self._write_state()
        self._agent_task = asyncio.create_task(agent.run())
        self._base_task = asyncio.create_task(publish_base_releases(agent, START_ORDER, self.say))
        if reports_every is not None:
            self._reports = report_job(self.data_dir, reports_every, self.say)
            self._reports.start()
        web_app = self.web_url if os.environ.get(WEB_ROOT_ENV) else ""
        tell_how_to_connect(
            self.say,
            self.data_dir,
            self.front_doors["gateway"],
            api_url=self.web_url,
            web_app=web_app,
            ca=self.pki.ca_cert,
        )
        tell_cli_steps(self.say, self.data_dir, new_folder=new_folder)
        self.say("press Ctrl-C to stop everything")

    @property
    def web_address(self) -> str:
        assert self.web_claim is not None
        return f"127.0.0.1:{self.web_claim.getsockname()[1]}"

    @property
    def web_url(self) -> str:
        return f"https://{self.web_address}/"

    @property
    def replicas(self) -> int:
        return self.nats.replicas

    @property
    def nats_url(self) -> str:
        return self.nats.url

    @property
    def archive_location(self) -> str:
        if self.database_url:
            return f"PostgreSQL at {location_of(self.database_url)}"
        return f"SQLite in {self.data_dir / SQLITE_ARCHIVE}"

    def _record_state(self) -> None:
        """The state file, once the services run (before, the starting state names the nodes' pids)."""
        if self.agent is not None:
            self._write_state()
        else:
            self._write_starting_state()

    def _environment(self) -> dict[str, str]:
        """What every instance is told; the agent adds its own listening port and instance id."""
        assert self.nats.nodes
        env = {
            "PARLEY_DATA_DIR": str(self.data_dir),
            "PARLEY_NATS_URL": self.nats_url,
            "PARLEY_NATS_REPLICAS": str(self.replicas),
            # Read by the gateway only (parley_gateway.web).
            "PARLEY_WEB_LISTEN_ADDRESS": self.web_address,
            WEB_ROOT_ENV: os.environ.get(WEB_ROOT_ENV, ""),
            # Each instance's Prometheus /metrics on a free port, named in metrics/targets/ (file_sd).
            "PARLEY_METRICS_LISTEN": "127.0.0.1:0",
            # Read by storage; empty: SQLite in the data folder.
            "PARLEY_DATABASE_URL": self.database_url,
        }
        for peer, var in PEER_ADDRESS_ENV.items():
            env[var] = self.front_doors[peer].address
        for peer, var in STABLE_ADDRESS_ENV.items():
            door = self.front_doors[peer]
            if isinstance(door, FrontDoor):
                env[var] = door.stable_address
        return env

    def _state(self) -> dict[str, Any]:
        assert self.agent is not None
        web_port = self.web_claim.getsockname()[1] if self.web_claim is not None else None
        fleet = self.agent.instances_of
        return running_state(self.data_dir, self.front_doors, fleet, nats=self._nats_fields(), web_port=web_port)

    def _nats_fields(self) -> dict[str, Any]:
        return {
            "nats_url": self.nats_url,
            "nats_pids": [node.pid for node in self.nats.nodes if node.running],
            "nats": self.nats.state(),
        }

    def _write_starting_state(self) -> None:
        write_starting_state(self.data_dir, self._nats_fields())

    def _write_state(self) -> None:
        """Rewritten whenever what runs changed (a restart, a roll-out step)."""
        assert self.pki is not None
        state = self._state()
        if state == self._written_state:
            return
        self._written_state = state
        gateway = self.front_doors["gateway"].address
        client = {"gateway_address": gateway, "ca_cert": str(self.pki.ca_cert), "web_url": self.web_url}
        write_running_state(self.data_dir, state, client=client)

    async def supervise(self) -> None:
        """Report services that stop; restart the ones that crash (a clean exit is an operator's stop).

        Every pass looks at all exits, including those that happened while an earlier restart
        was waiting for health, so several crashes at once are all handled. Instances a roll-out
        stops are the agent's business: they leave its books before they stop.
        """
        # Looks again every half second: waiting on each child's wait() missed exits that happened
        # while another service was being restarted.
        passes = every(SUPERVISE_INTERVAL_S, self._supervise_once, name="platform-supervisor")
        self._supervisor = passes
        passes.start()
        try:
            await self._stopping.wait()
        finally:
            await passes.stop()

    async def _supervise_once(self) -> None:
        assert self.agent is not None
        self._warnings.close_quiet_outages()
        for instance in self.agent.exited():
            assert instance.process is not None
            await self._on_exit(instance, instance.process.returncode or 0)
        self._write_state()
        try:
            await self.nats.apply_quarantine()  # `parley quarantine lift` changed the file
        except RuntimeError as exc:
            self.say(f"nats-server's quarantine not applied: {exc}")
        if self._agent_task is not None and self._agent_task.done() and not self._agent_task.cancelled():
            self.say(f"the node agent stopped: {self._agent_task.exception()!r}; roll-outs wait for a restart")
            self._agent_task = None
        if not any(i.process and i.process.returncode is None for i in self.agent.instances.values()):
            self.say("no service is running; waiting for Ctrl-C")
            if self._supervisor is not None:
                self._supervisor.stop_soon()

    async def _on_exit(self, instance: Instance, code: int) -> None:
        assert self.agent is not None
        name = instance.service
        if code == 0:
            self.agent.forget(instance.instance_id)
            self.say(f"UNHEALTHY: {name} stopped (exit 0) and stays down; platform degraded")
            return
        if not self.restart_budget.take(name, time.monotonic()):
            self.agent.forget(instance.instance_id)
            self.say(
                f"UNHEALTHY: {name} crashed (exit {code}) {RESTART_LIMIT} times, each within "
                f"{RESTART_RESET_AFTER_S:g} s of its restart; not restarting"
            )
            return
        used = self.restart_budget.used[name]
        self.say(f"UNHEALTHY: {name} crashed (exit {code}); restarting ({used}/{RESTART_LIMIT})")
        if await self.agent.restart(instance.instance_id):
            self._write_state()
            self.say(f"{name} is serving again")
        else:
            self.say(f"{name} did not become healthy again; see {self.agent.log_path(name)}")

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self) -> None:
        self._stopping.set()
        mark_stopped(self.data_dir)
        if self._reports is not None:
            await self._reports.stop()
        for task in (self._base_task, self._agent_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.nats.stop_guard()
        for connection in (self._guard_watch_nc, self._guard_nc):
            if connection is not None:
                await connection.close()
        if self._usernames is not None:
            await self._usernames.close()
        if self.agent is not None:
            for instance in await self.agent.stop(order=list(reversed(START_ORDER))):
                code = instance.process.returncode if instance.process else None
                self.say(f"{instance.service} stopped (exit {code})")
        else:
            for door in self.front_doors.values():
                await door.stop()
            if self.web_claim is not None:
                self.web_claim.close()
        await self.nats.stop()
        self._warnings.close_quiet_outages()
        logging.getLogger().removeHandler(self._warnings)
