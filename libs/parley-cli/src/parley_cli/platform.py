"""`parley up`: nats-server (or a JetStream cluster) and every service, run by the node agent, supervised.

First start creates the data folder (0700), the local CA and certificates, and the NATS users;
later starts reuse them, so messages and accounts survive a restart.

Every service runs behind the agent's front door, the address the other services are told; the
gateway's instances share the client port themselves, so they see each client's real address.
The agent follows the patch registry's roll-outs, so a release approved with `parley patch`
replaces the running version without a restart of the platform.
The version each service ended on is kept in the state file and started again next time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

import grpc
from nats.aio.client import Client

from parley_agent import AgentTimeouts, Door, Instance, NodeAgent, door_for
from parley_agent.front_door import FrontDoor
from parley_agent.installer import installed_wheel
from parley_agent.shared_port import claim, requests_migrate
from parley_cli.nats_handover import moved_to
from parley_cli.publishing import base_wheel, publish_base_release, source_folder
from parley_cli.quarantine import put_in_quarantine, quarantined
from parley_cli.report_schedule import report_every, report_job
from parley_cli.restart_budget import RESTART_LIMIT, RESTART_RESET_AFTER_S, RestartBudget
from parley_cli.state import (
    CLIENT_FILE,
    STATE_FILE,
    leftover_pids,
    previous_nats_ports,
    previous_port,
    previous_version,
    previous_web_port,
)
from parley_cli.terminal import shown
from parley_cli.uplock import PlatformAlreadyRunning, UpLock
from parley_cli.usernames import ArchiveUsernames
from parley_cli.wheels import WheelBuildError, release_sources
from parley_core.bus import EventBus
from parley_core.config import PEER_ADDRESS_ENV, RESTORED_MARKER, STABLE_ADDRESS_ENV, Settings
from parley_core.consumer_guard import ConsumerGuard, ensure_declared_durables
from parley_core.database import (
    SQLITE_ARCHIVE,
    DatabaseChoiceRefused,
    UnsupportedDatabase,
    check_database_url,
    choose_database,
    location_of,
)
from parley_core.files import ensure_private_dir, write_private_file
from parley_core.jobs import PeriodicJob, every
from parley_core.nats_connect import connect_nats
from parley_core.nats_process import NatsServerProcess
from parley_core.natsconf import (
    ROUTE_USER,
    ClusterConfig,
    ensure_nats_passwords,
    holds_pre_account_streams,
    render_server_config,
)
from parley_core.net import host_address, port_or_free
from parley_core.pki import Pki, ensure_pki
from parley_core.topology import METRICS_SCRAPER, PLATFORM_USER, SERVICES

# Start order; the gateway last, so its first client finds everything up. Stop in reverse.
START_ORDER = ("auth", "messaging", "storage", "patch-registry", "gateway")
# Services that may run several instances on one host (`parley up --instances`): the stateless
# front and the two whose instances settle races through the event log (expected sequences and
# claims). Storage's archive consumer and the registry's roll-out driver run once per platform.
SCALABLE = ("gateway", "messaging", "auth")
MAX_INSTANCES = 4  # on one host: more only splits the same cores further
DEFAULT_GATEWAY_PORT = 7443
# The gateway's address for browsers (the web app and the Connect API), claimed like the client
# port so every gateway instance, old and new during a roll-out, listens there too.
DEFAULT_WEB_PORT = 8443
# The built web app (web/dist) the gateway serves there; `make run` sets it.
WEB_ROOT_ENV = "PARLEY_WEB_ROOT"
HEALTH_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 20.0
SUPERVISE_INTERVAL_S = 0.5
STORE_KEY_FILE = "jetstream-store.key"
CLUSTER_NAME = "parley"
STREAMS_READY_TIMEOUT_S = 60.0
# A nats-server that died is started again at once; one that dies again within NATS_STABLE_S
# of its restart waits before the next, twice as long each time up to NATS_RESTART_MAX_S.
NATS_RESTART_FIRST_S = 0.5
NATS_RESTART_MAX_S = 30.0
NATS_STABLE_S = 60.0


def ensure_store_key(path: Path) -> str:
    """The JetStream store's encryption key (nats-server encrypts message blocks and metadata).

    Created once, 0600, beside the other secrets; losing it makes the event log unreadable, so
    it belongs in the operator's key backup. A store created before this key existed keeps its
    old blocks readable and encrypts every new block (nats-server's documented behaviour).
    """
    if path.exists():
        key = path.read_text(encoding="ascii").strip()
        if len(key) < 32:
            raise ValueError(f"{path} holds a JetStream store key shorter than 32 characters")
        return key
    key = secrets.token_urlsafe(48)
    write_private_file(path, (key + "\n").encode())
    return key


def base_version(service: str) -> str:
    """The version installed in this environment: what runs until a roll-out replaces it."""
    return metadata.version(f"parley-{service}")


class Platform:
    def __init__(
        self,
        data_dir: Path,
        *,
        gateway_port: int | None = None,
        nats_cluster: int = 1,
        instances: Mapping[str, int] | None = None,
        out: TextIO = sys.stdout,
    ) -> None:
        if nats_cluster != 1 and nats_cluster < 3:
            raise ValueError("a JetStream cluster needs at least 3 nodes to survive the loss of one")
        self.instances = dict.fromkeys(START_ORDER, 1) | dict(instances or {})
        self.data_dir = data_dir.resolve()
        self.requested_gateway_port = gateway_port
        self.nats_cluster = nats_cluster
        # PostgreSQL's URL (run_platform sets it from --database-url or the folder's record); "": SQLite.
        self.database_url = ""
        self.out: TextIO | None = out
        self.front_doors: dict[str, Door] = {}
        self.web_claim: socket.socket | None = None
        self.agent: NodeAgent | None = None
        self.nats_nodes: list[NatsServerProcess] = []
        self.nats_routes: list[str] = []
        self.pki: Pki | None = None
        self.restart_budget = RestartBudget()
        self._written_state: dict[str, Any] = {}
        self._agent_task: asyncio.Task[None] | None = None
        self._nats_watchers: list[asyncio.Task[None]] = []
        self.nats_restarts: dict[str, int] = {}
        self._base_task: asyncio.Task[None] | None = None
        self._usernames: ArchiveUsernames | None = None
        self._reports: PeriodicJob | None = None
        self._supervisor: PeriodicJob | None = None
        self._stopping = asyncio.Event()
        # The platform's own NATS connection, and the consumer guard's, apart: every JetStream API
        # call's audit advisory (with its request body, up to max_payload) reaches the guard, and a
        # junk flood of them once had nats-server cut `parley up`'s one connection as a slow consumer.
        # Each node's config as a function of the quarantined services (rendered again when that changes).
        self.guard: ConsumerGuard | None = None
        self._guard_nc: Client | None = None
        self._guard_watch_nc: Client | None = None
        self._renderers: list[Callable[[frozenset[str]], str]] = []
        self._rendered_quarantine: frozenset[str] = frozenset()
        self._quarantine_lock = asyncio.Lock()

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

    async def _open_client_port(self) -> Door:
        """The gateway's port: the one asked for, else the previous run's (so clients find it
        again), else 7443, else a free one. Connections of the previous run that linger in
        TIME_WAIT do not make it move (parley_agent.shared_port.claim)."""
        previous = previous_port(self.data_dir, "gateway")
        candidates: dict[int, str] = {}  # each port once, with the first reason to try it
        for port, why in (
            (self.requested_gateway_port, "asked for"),
            (previous, "the last run's"),
            (DEFAULT_GATEWAY_PORT, "the default"),
        ):
            if port:
                candidates.setdefault(int(port), why)
        busy: list[str] = []
        door: Door | None = None
        for port, why in candidates.items():
            try:
                door = await door_for("gateway", port=port).start()
                break
            except OSError:
                busy.append(f"{port} ({why})")
        if door is None:
            door = await door_for("gateway").start()
        if busy:
            # Clients told the usual address would find nothing there: say where the gateway is instead.
            taken = door.address.rsplit(":", 1)[-1]
            ports = f"port {busy[0]} is" if len(busy) == 1 else f"ports {' and '.join(busy)} are"
            self.say(f"gateway {ports} busy; the gateway took port {taken} instead")
        return door

    async def start(self) -> None:
        reports_every = report_every()  # a bad $PARLEY_REPORT_EVERY_HOURS fails here, before anything starts
        # A new folder has no accounts yet (a restored one has its backup's); auth offers no cheap
        # "any account?" question, so the first-owner hint is shown on a new folder's first start only.
        new_folder = not (self.data_dir / "pki").exists() and not (self.data_dir / RESTORED_MARKER).exists()
        ensure_private_dir(self.data_dir)
        for sub in ("logs", "nats", "secrets", "agent"):
            ensure_private_dir(self.data_dir / sub)
        own = [host_address()]  # the certificates name the address other hosts reach this one at
        self.pki = ensure_pki(self.data_dir / "pki", [*SERVICES, "nats", PLATFORM_USER, METRICS_SCRAPER], own)
        users = [*SERVICES, PLATFORM_USER, *([ROUTE_USER] if self.nats_cluster > 1 else [])]
        passwords = ensure_nats_passwords(self.data_dir / "secrets" / "nats-passwords.json", users)

        await self._start_nats(passwords)
        self._write_starting_state()
        self._nats_watchers = [asyncio.create_task(self._supervise_nats(node)) for node in self._local_nats_nodes()]
        where = self.data_dir / "nats" / ("jetstream" if self.nats_cluster == 1 else "node*/jetstream")
        kind = "nats-server" if self.nats_cluster == 1 else f"{self.nats_cluster}-node JetStream cluster (replicas 3)"
        if len(self._local_nats_nodes()) < len(self.nats_nodes):
            kind += f", {len(self._local_nats_nodes())} node(s) on this host, the others on joined hosts,"
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
            await self._reseed_restored_log()
        self._guard_watch_nc = await connect_nats(
            url=self.nats_url,
            user=PLATFORM_USER,
            password=passwords[PLATFORM_USER],
            ca_cert=self.pki.ca_cert,
            name="parley-up-consumer-guard",
        )
        await self._start_consumer_guard(nc, self._guard_watch_nc, settings.consumer_quota)

        self.say(f"archive: {self.archive_location}")
        self._claim_web_port()
        # Every front door first: each service is told the others' addresses when it starts.
        for name in START_ORDER:
            self.front_doors[name] = await (self._open_client_port() if name == "gateway" else door_for(name).start())
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
        installed = await self._install_base_releases(agent)
        for name in START_ORDER:
            for _ in range(self.instances[name]):
                await self._start_service(agent, name, installed.get(name))
        self._write_state()
        self._agent_task = asyncio.create_task(agent.run())
        self._base_task = asyncio.create_task(self._publish_base_releases(agent))
        if reports_every is not None:
            self._reports = report_job(self.data_dir, reports_every, self.say)
            self._reports.start()
        gateway = self.front_doors["gateway"]
        self.say(f"all services are up. Gateway (TLS): {gateway.address}")
        if os.environ.get(WEB_ROOT_ENV):
            self.say(f"web app: {self.web_url} (TLS; your browser must trust the CA certificate below)")
        else:
            self.say(f"browser API (Connect, TLS): {self.web_url} (no web app: start with `make run` to build it)")
        self.say(f"CA certificate for clients: {self.pki.ca_cert}")
        self.say(f"logs: {self.data_dir / 'logs'}")
        cli = f".venv/bin/parley --data-dir {self.data_dir}"
        if new_folder:
            self.say("connect the CLI from another terminal, for example (first account: an owner):")
            self.say(f"  {cli} admin create-user alice --role owner")
            self.say(f"  {cli} login alice")
            self.say(f"  {cli} --as alice create-channel general")
            self.say(f"  {cli} --as alice chat general")
        else:
            # Its accounts and channels exist already: a "create #general" hint would make a second one.
            self.say("connect the CLI from another terminal, for example:")
            self.say(f"  {cli} login USER")
            self.say(f"  {cli} --as USER channels")
            self.say(f"  {cli} --as USER chat CHANNEL")
        self.say("press Ctrl-C to stop everything")

    async def _start_consumer_guard(self, nc: Client, watch_nc: Client, quota: int) -> None:
        """Every declared durable made (so no flood keeps one from being made), then the guard
        watching every consumer made from now on (parley_core.consumer_guard), before any service starts."""
        made = await ensure_declared_durables(nc)
        if made:
            self.say(f"declared durable consumers made: {', '.join(made)}")
        self.guard = ConsumerGuard(watch_nc, quota=quota, announce=self.say, quarantine=self._quarantine)
        self.guard.quarantined.update(self._rendered_quarantine)
        await self.guard.start()
        held = f"; quarantined: {', '.join(sorted(self._rendered_quarantine))}" if self._rendered_quarantine else ""
        self.say(f"consumer guard on: at most {quota} ephemeral consumers per service and stream{held}")

    async def _quarantine(self, service: str, why: str) -> None:
        """The guard found `service`'s credential flooding: on record, and out of nats-server's config."""
        put_in_quarantine(self.data_dir, service, why)
        await self._apply_quarantine()

    async def _apply_quarantine(self) -> None:
        """nats-server's config as the quarantine file says (an operator may have lifted one), reloaded."""
        async with self._quarantine_lock:
            held = frozenset(quarantined(self.data_dir))
            if held == self._rendered_quarantine:
                return
            for node, render in zip(self.nats_nodes, self._renderers, strict=True):
                write_private_file(node.config_path, render(held).encode())
            put_in, lifted = held - self._rendered_quarantine, self._rendered_quarantine - held
            self._rendered_quarantine = held  # in the files now: a node started again applies it too
            for node in self.nats_nodes:
                if node.running:
                    await node.reload()
            if self.guard is not None:
                for service in lifted:
                    self.guard.lifted(service)
                self.guard.quarantined.update(held)
            for service in sorted(put_in):
                self.say(
                    f"SECURITY: {service} quarantined: its NATS account may make no consumer but its declared "
                    f"durables; see `parley quarantine`, then `parley quarantine lift {service}`"
                )
            for service in sorted(lifted):
                self.say(f"{service}'s quarantine lifted: it may make consumers again")

    def _claim_web_port(self) -> None:
        """The previous run's port (so a browser's bookmark finds the app again), else 8443, else a
        free port; held (parley_agent.shared_port.claim) while the platform runs."""
        candidates: dict[int, str] = {}  # each port once, with the first reason to try it
        for port, why in ((previous_web_port(self.data_dir), "the last run's"), (DEFAULT_WEB_PORT, "the default")):
            if port:
                candidates.setdefault(port, why)
        busy: list[str] = []
        for port, why in candidates.items():
            try:
                self.web_claim = claim("127.0.0.1", port)
                break
            except OSError:
                busy.append(f"{port} ({why})")
        if self.web_claim is None:
            self.web_claim = claim("127.0.0.1", 0)
        if busy:
            # A browser pointed at the usual address would find nothing there: say where it is instead.
            taken = self.web_claim.getsockname()[1]
            ports = f"port {busy[0]} is" if len(busy) == 1 else f"ports {' and '.join(busy)} are"
            self.say(f"web {ports} busy; the web app took port {taken} instead")

    @property
    def web_address(self) -> str:
        assert self.web_claim is not None
        return f"127.0.0.1:{self.web_claim.getsockname()[1]}"

    @property
    def web_url(self) -> str:
        return f"https://{self.web_address}/"

    @property
    def archive_location(self) -> str:
        if self.database_url:
            return f"PostgreSQL at {location_of(self.database_url)}"
        return f"SQLite in {self.data_dir / SQLITE_ARCHIVE}"

    @property
    def replicas(self) -> int:
        """Each stream on 3 nodes of a cluster: an acknowledged event outlives the loss of one."""
        return 1 if self.nats_cluster == 1 else 3

    @property
    def nats_url(self) -> str:
        """Every local node's URL, comma-separated: clients fail over between them (and learn the
        nodes on other hosts from the cluster)."""
        return ",".join(node.url for node in self._local_nats_nodes())

    def _local_nats_nodes(self) -> list[NatsServerProcess]:
        """The nodes this host runs: not those handed over to a joined host (nats_handover)."""
        return [node for node in self.nats_nodes if moved_to(node.config_path.parent) is None]

    def _nats_folders(self) -> list[Path]:
        """Where each node keeps its config and store: one server in nats/, cluster nodes in nats/nodeN/."""
        nats = self.data_dir / "nats"
        if self.nats_cluster == 1:
            return [nats]
        return [nats / f"node{index}" for index in range(self.nats_cluster)]

    def _refuse_other_layout(self) -> None:
        """The events live in one store layout; starting the other would start with an empty log."""
        nats = self.data_dir / "nats"
        single, clustered = (nats / "jetstream").exists(), (nats / "node0" / "jetstream").exists()
        if self.nats_cluster > 1 and single:
            raise RuntimeError(f"{self.data_dir} holds a single nats-server's events; start it without --nats-cluster")
        if self.nats_cluster == 1 and clustered:
            raise RuntimeError(f"{self.data_dir} holds a JetStream cluster's events; start it with --nats-cluster")
        if any(holds_pre_account_streams(folder / "jetstream") for folder in self._nats_folders()):
            raise RuntimeError(
                f"{self.data_dir} holds an event log from before each service had its own NATS account, which this "
                "version cannot read: back it up with the version that made it (`parley backup create`), restore "
                "the backup into a new, empty data folder with this one (`parley backup restore`) and start that "
                "folder, which re-seeds the log"
            )

    async def _start_nats(self, passwords: dict[str, str]) -> None:
        assert self.pki is not None
        self._refuse_other_layout()
        self._rendered_quarantine = frozenset(quarantined(self.data_dir))
        identity = self.pki.identity("nats")
        store_key = ensure_store_key(self.data_dir / "secrets" / STORE_KEY_FILE)
        folders = self._nats_folders()
        previous = previous_nats_ports(self.data_dir)
        address = host_address()  # other hosts' nodes route here and clients connect here
        previous += [(None, None)] * (len(folders) - len(previous))
        client_ports = [port_or_free(client, address) for client, _ in previous[: len(folders)]]
        route_ports = [port_or_free(route, address) for _, route in previous[: len(folders)]]
        routes = tuple(f"{address}:{port}" for port in route_ports)
        self.nats_routes = list(routes)
        for index, folder in enumerate(folders):
            ensure_private_dir(folder)
            cluster = None
            if self.nats_cluster > 1:
                cluster = ClusterConfig(
                    name=CLUSTER_NAME,
                    host=address,
                    port=route_ports[index],
                    routes=routes,
                    route_user=ROUTE_USER,
                    route_password=passwords[ROUTE_USER],
                )
            render = partial(
                render_server_config,
                host=address,
                port=client_ports[index],
                store_dir=folder / "jetstream",
                tls_cert=identity.cert,
                tls_key=identity.key,
                ca_cert=self.pki.ca_cert,
                passwords=passwords,
                server_name="parley" if cluster is None else f"parley-node{index}",
                store_cipher_key=store_key,
                cluster=cluster,
            )
            self._renderers.append(_with_quarantine(render))
            config_path = folder / "nats-server.conf"
            write_private_file(config_path, self._renderers[-1](self._rendered_quarantine).encode())
            log_name = "nats-server.log" if cluster is None else f"nats-server-{index}.log"
            self.nats_nodes.append(
                NatsServerProcess(
                    config_path=config_path,
                    host=address,
                    port=client_ports[index],
                    log_path=self.data_dir / "logs" / log_name,
                )
            )
        for node in self._local_nats_nodes():
            await node.start()

    def nats_name(self, node: NatsServerProcess) -> str:
        """`nats-server`, or a cluster node's `nats-server-N` (its log is logs/<name>.log)."""
        return "nats-server" if len(self.nats_nodes) == 1 else f"nats-server-{self.nats_nodes.index(node)}"

    async def _supervise_nats(self, node: NatsServerProcess) -> None:
        """Start a node that died again with its own configuration, port and store, with backoff.

        Services keep reconnecting meanwhile and resume by themselves; sends wait within their
        deadline (parley_core.bus) and are answered once the broker is back. A node that dies
        again soon after its restart waits before the next one, longer each time.
        """
        name = self.nats_name(node)
        loop = asyncio.get_running_loop()
        pause, up_since = 0.0, float("-inf")
        while True:
            code = await node.wait_exit()
            if self._stopping.is_set():
                return
            if (host := moved_to(node.config_path.parent)) is not None:
                self.say(f"{name} stopped (exit {code}): handed over to host {shown(host)}, which runs it now")
                self._record_state()
                return
            died = loop.time()
            pause = _longer(pause) if died - up_since < NATS_STABLE_S else 0.0
            self.nats_restarts[name] = self.nats_restarts.get(name, 0) + 1
            self.say(f"UNHEALTHY: {name} stopped (exit {code}); restarting it with the same configuration and store")
            self._record_state()
            attempt = 0
            while not node.running:
                if await self._stopped_within(pause):
                    return
                attempt += 1
                try:
                    await node.restart()
                except RuntimeError as exc:
                    pause = _longer(pause)
                    why = str(exc).splitlines()[0]
                    self.say(f"{name} did not start again (attempt {attempt}: {why}); next try in {pause:.1f} s")
            up_since = loop.time()
            self.say(f"{name} is serving again (down {up_since - died:.1f} s); services reconnect by themselves")
            self._record_state()

    async def _stopped_within(self, seconds: float) -> bool:
        """Wait `seconds` unless `parley up` is told to stop first; True if it was."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()

    def _record_state(self) -> None:
        """The state file, once the services run (before, the starting state names the nodes' pids)."""
        if self.agent is not None:
            self._write_state()
        else:
            self._write_starting_state()

    async def _reseed_restored_log(self) -> None:
        """A folder restored from a backup: its archive goes back into the event log before any
        service starts (storage's own tool, as the platform identity; it resumes if interrupted)."""
        self.say("restored from a backup: putting the archive's events back into the event log first")
        tool = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "parley_storage.reseed",
            "--data-dir",
            str(self.data_dir),
            "--nats-url",
            self.nats_url,
            *(["--database-url", self.database_url] if self.database_url else []),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert tool.stdout is not None
        assert tool.stderr is not None
        errors = asyncio.create_task(tool.stderr.read())
        async for raw in tool.stdout:
            line = raw.decode().strip()
            if line and not line.startswith("{"):  # the closing JSON summary is for scripts
                self.say(f"  {line}")
        problem = (await errors).decode().strip()
        failed = await tool.wait() != 0
        if self._stopping.is_set():
            raise RuntimeError("stopped while putting the archive back into the event log; the next start resumes it")
        if failed:
            raise RuntimeError(problem.splitlines()[-1] if problem else "re-seeding the event log failed")
        self.say("event log re-seeded from the archive; starting the services")

    async def _install_base_releases(self, agent: NodeAgent) -> dict[str, Path]:
        """Each service's base version installed as a wheel in its own environment (all at once;
        once per host and source content: later starts find it installed), so that no instance
        runs from the source tree. A service not installed from a source folder runs as installed."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        wheels: dict[str, Path] = {}

        async def install(name: str) -> tuple[str, Path | None]:
            version = base_version(name)
            source = source_folder(name)
            if source is None or not (source / "pyproject.toml").exists():
                return name, agent.installed_python(name, version)
            sources = await asyncio.to_thread(release_sources, source)
            env_dir = agent.env_dir(name, version)
            built_from = env_dir.with_name(f"{env_dir.name}.source")  # the sources' digests at install
            python = agent.installed_python(name, version)
            if python is not None:
                changed = _changed_sources(built_from, sources)
                if changed:
                    self.say(
                        f"note: {', '.join(changed)} changed since {name} {version} was installed; the release "
                        f"keeps running: publish the change as a new version and roll it out (or use a new data folder)"
                    )
                return name, python
            try:
                wheel = await asyncio.to_thread(base_wheel, source, version)
            except (WheelBuildError, OSError) as error:
                raise RuntimeError(f"the base release {name} {version} could not be built: {error}") from error
            wheels[name] = wheel
            python = await agent.install(name, version, wheel)
            built_from.write_text(json.dumps(sources, indent=1) + "\n")
            return name, python

        installed = {name: python for name, python in await asyncio.gather(*map(install, START_ORDER)) if python}
        if wheels:
            took = loop.time() - began
            self.say(f"installed base releases {', '.join(sorted(wheels))} in {agent.data_dir / 'envs'} ({took:.1f} s)")
        return installed

    async def _start_service(self, agent: NodeAgent, name: str, base_python: Path | None) -> None:
        """The version it ran last time if the agent installed that one, else the base release."""
        version, python = base_version(name), base_python
        previous = previous_version(self.data_dir, name)
        if previous and previous != version:
            previous_python = agent.installed_python(name, previous)
            if previous_python is not None:
                version, python = previous, previous_python
                self.say(f"{name} runs {previous}, the release its last roll-out left running")
            else:
                self.say(f"{name} {previous} is not installed in {agent.data_dir}; starting {version}")
        try:
            await agent.start_serving(name, version, python, in_fleet=False)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}:\n{_why_it_stopped(agent.log_path(name))}") from exc

    async def _publish_base_releases(self, agent: NodeAgent) -> None:
        """Each service's base version as a signed release in the registry (once, on the first
        start), so that `parley patch revert` can return to it after a roll-out: the very wheel
        its instances run, which the agent then checks against the release through TUF."""
        published, verified = [], []
        for name in START_ORDER:
            version = base_version(name)
            wheel = installed_wheel(agent.env_dir(name, version))
            try:
                release = await publish_base_release(agent.registry, service=name, version=version, wheel=wheel)
                if wheel is not None:
                    problem = await agent.verify_installed(name, version, release.target_path)
                    if problem:
                        self.say(f"WARNING: {problem}: {name} reports {version} but does not run that release")
                        continue
                    verified.append(f"{name} {version}")
            except (grpc.aio.AioRpcError, WheelBuildError, OSError) as error:
                why = error.details() if isinstance(error, grpc.aio.AioRpcError) else str(error)
                self.say(f"base release {name} {version} not published ({why}); a revert cannot return to it")
                continue
            published.append(f"{name} {version}")
        if published:
            self.say(f"base releases (signed, kept for revert): {', '.join(published)}")
        if verified:
            self.say(f"base releases installed as signed (checked through TUF): {', '.join(verified)}")

    def _environment(self) -> dict[str, str]:
        """What every instance is told; the agent adds its own listening port and instance id."""
        assert self.nats_nodes
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
        services: dict[str, Any] = {}
        for name, door in self.front_doors.items():
            instances = [i for i in self.agent.instances_of(name) if i.serving]
            running = [i for i in instances if i.process is not None and i.process.returncode is None]
            services[name] = {
                "port": door.port,
                "address": door.address,
                # The first live instance: what `kill` in a test or an operator's script means.
                "pid": running[0].process.pid if running and running[0].process else None,
                "version": instances[-1].version if instances else previous_version(self.data_dir, name),
                "instances": [
                    {
                        "instance_id": i.instance_id,
                        "address": i.address,
                        "version": i.version,
                        "pid": i.process.pid if i.process else None,
                    }
                    for i in instances
                ],
            }
        return {
            "running": True,
            "pid": os.getpid(),
            "nats_url": self.nats_url,
            "nats_pids": [node.pid for node in self.nats_nodes if node.running],
            "nats": self._nats_state(),
            "services": services,
            "web": {"port": self.web_claim.getsockname()[1] if self.web_claim is not None else None},
        }

    def _nats_state(self) -> list[dict[str, Any]]:
        """Each node as `parley status` shows it: where it listens, its pid, how often it was restarted."""
        return [
            {
                "name": self.nats_name(node),
                "url": node.url,
                "route": self.nats_routes[index] if len(self.nats_routes) > 1 else None,
                "pid": node.pid if node.running else None,
                "running": node.running,
                "restarts": self.nats_restarts.get(self.nats_name(node), 0),
                "moved_to": moved_to(node.config_path.parent),
            }
            for index, node in enumerate(self.nats_nodes)
        ]

    def _write_starting_state(self) -> None:
        """Once nats-server runs: a `parley up` killed before its services are up (a long re-seed)
        leaves pids the next start and `parley status` find. Ports and versions of the last run
        are kept for this start to reuse."""
        path = self.data_dir / STATE_FILE
        previous = json.loads(path.read_text()) if path.exists() else {}
        services = {
            name: {"port": s.get("port"), "version": s.get("version"), "instances": []}
            for name, s in previous.get("services", {}).items()
        }
        state = {
            "running": True,
            "pid": os.getpid(),
            "nats_url": self.nats_url,
            "nats_pids": [node.pid for node in self.nats_nodes if node.running],
            "nats": self._nats_state(),
            "services": services,
            "web": previous.get("web", {}),
        }
        write_private_file(path, json.dumps(state, indent=2).encode())

    def _write_state(self) -> None:
        """Rewritten whenever what runs changed (a restart, a roll-out step)."""
        assert self.pki is not None
        state = self._state()
        if state == self._written_state:
            return
        self._written_state = state
        write_private_file(self.data_dir / STATE_FILE, json.dumps(state, indent=2).encode())
        client = {
            "gateway_address": self.front_doors["gateway"].address,
            "ca_cert": str(self.pki.ca_cert),
            "web_url": self.web_url,
        }
        write_private_file(self.data_dir / CLIENT_FILE, json.dumps(client, indent=2).encode())

    def _mark_stopped(self) -> None:
        """Keep the ports and versions for the next start, but let no client dial a platform that is gone."""
        (self.data_dir / CLIENT_FILE).unlink(missing_ok=True)
        path = self.data_dir / STATE_FILE
        if path.exists():
            state = json.loads(path.read_text())
            state["running"] = False
            write_private_file(path, json.dumps(state, indent=2).encode())

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
        for instance in self.agent.exited():
            assert instance.process is not None
            await self._on_exit(instance, instance.process.returncode or 0)
        self._write_state()
        try:
            await self._apply_quarantine()  # `parley quarantine lift` changed the file
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
        for watcher in self._nats_watchers:
            watcher.cancel()
        await asyncio.gather(*self._nats_watchers, return_exceptions=True)
        self._mark_stopped()
        if self._reports is not None:
            await self._reports.stop()
        for task in (self._base_task, self._agent_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.guard is not None:
            await self.guard.stop()
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
        for node in reversed(self.nats_nodes):
            await node.stop()
        if self.nats_nodes:
            self.say("nats-server stopped" if len(self.nats_nodes) == 1 else "JetStream cluster stopped")


def _with_quarantine(render: Callable[..., str]) -> Callable[[frozenset[str]], str]:
    def rendered(held: frozenset[str]) -> str:
        return render(quarantined=held)

    return rendered


def _changed_sources(marker: Path, sources: dict[str, str]) -> list[str]:
    """The folders whose content differs from when the release recorded in `marker` was built
    (an older marker holds only the service folder's digest)."""
    if not marker.exists():
        return []
    text = marker.read_text().strip()
    recorded = json.loads(text) if text.startswith("{") else {next(iter(sources)): text}
    return [folder for folder, digest in sources.items() if folder in recorded and recorded[folder] != digest]


def _longer(pause: float) -> float:
    return min(max(pause * 2, NATS_RESTART_FIRST_S), NATS_RESTART_MAX_S)


def _why_it_stopped(path: Path) -> str:
    """A service that refused to start logged why as its last record: that line alone. Anything
    else: the end of its log."""
    tail = _tail(path)
    last = tail.splitlines()[-1] if tail else ""
    with contextlib.suppress(ValueError, AttributeError):
        message = str(json.loads(last).get("msg", ""))
        if message.startswith("refusing to start"):
            return message
    return tail


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def parse_instances(spec: str) -> dict[str, int]:
    """`messaging=2,gateway=2` as {service: count}; ValueError with what to write instead."""
    counts: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, equals, number = part.partition("=")
        name = name.strip()
        if not equals or not number.strip().isdigit():
            raise ValueError(f"{part!r} is not SERVICE=N (for example messaging=2,gateway=2)")
        if name not in SCALABLE:
            if name in START_ORDER:
                raise ValueError(f"{name} runs once per platform; several instances: {', '.join(SCALABLE)}")
            raise ValueError(f"no service {name!r}; several instances: {', '.join(SCALABLE)}")
        if name in counts:
            raise ValueError(f"{name} is given twice")
        count = int(number)
        if not 1 <= count <= MAX_INSTANCES:
            raise ValueError(f"{name}={count}: from 1 to {MAX_INSTANCES} instances on one host")
        counts[name] = count
    return counts


async def run_platform(
    data_dir: Path, *, gateway_port: int | None, nats_cluster: int = 1, database_url: str = "", instances: str = ""
) -> int:
    try:
        counts = parse_instances(instances)
    except ValueError as exc:
        print(f"[parley] --instances: {exc}", file=sys.stderr)
        return 2
    try:
        platform = Platform(data_dir, gateway_port=gateway_port, nats_cluster=nats_cluster, instances=counts)
    except ValueError as exc:
        print(f"[parley] --nats-cluster {nats_cluster}: {exc}", file=sys.stderr)
        return 2
    if database_url:
        try:
            check_database_url(database_url)
        except UnsupportedDatabase as exc:
            print(f"[parley] --database-url: {exc}", file=sys.stderr)
            return 2
    ensure_private_dir(platform.data_dir)
    lock = UpLock(platform.data_dir)
    try:
        lock.acquire()
    except PlatformAlreadyRunning as exc:
        print(f"[parley] refusing to start: {exc}", file=sys.stderr)
        return 1
    leftovers = leftover_pids(platform.data_dir)
    if leftovers:
        lock.release()
        print(
            f"[parley] refusing to start: an earlier `parley up` on {platform.data_dir} exited without "
            f"stopping its processes; pids {' '.join(map(str, leftovers))} still run (kill -TERM them first)",
            file=sys.stderr,
        )
        return 1
    try:
        platform.database_url = choose_database(platform.data_dir, database_url)
    except DatabaseChoiceRefused as exc:
        lock.release()
        print(f"[parley] refusing to start: {exc}", file=sys.stderr)
        return 1
    try:
        return await _run_locked(platform)
    finally:
        # Released only after stop(): every process this platform started has exited.
        lock.release()


async def _run_locked(platform: Platform) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, platform.request_stop)
    try:
        await platform.start()
        await platform.supervise()
    except (RuntimeError, TimeoutError, FileNotFoundError) as exc:
        platform.say(f"start failed: {exc}")
        await platform.stop()
        return 1
    platform.say("stopping")
    await platform.stop()
    platform.say("stopped; data kept in " + str(platform.data_dir))
    return 0
