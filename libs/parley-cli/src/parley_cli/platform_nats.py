"""`parley up`'s nats-server, or the nodes of its JetStream cluster that run on this host.

Each node's config is rendered here (TLS, the services' accounts, the cluster block, the store's
encryption key), again whenever the consumer guard (started here, on the platform's
connections) quarantines a service or an operator lifts it; a node that dies is
started again with its own config, ports and store. The ports of the last run are kept, so that
nodes handed over to joined hosts find this host's route address again.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from parley_cli.nats_handover import moved_to
from parley_cli.quarantine import put_in_quarantine, quarantined
from parley_cli.state import previous_nats_ports
from parley_cli.terminal import shown
from parley_core.consumer_guard import ConsumerGuard, ensure_declared_durables
from parley_core.files import ensure_private_dir, write_private_file
from parley_core.nats_process import NatsServerProcess
from parley_core.natsconf import ClusterConfig, holds_pre_account_streams, render_server_config
from parley_core.net import free_port, host_address, port_or_free
from parley_core.pki import Pki

STORE_KEY_FILE = "jetstream-store.key"
CLUSTER_NAME = "parley"
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


@dataclass(eq=False)
class PlatformNats:
    """The nodes' configs, processes and supervision; `on_change` is told when one stops or starts."""

    data_dir: Path
    _: KW_ONLY
    cluster: int
    say: Callable[[str], None]
    on_change: Callable[[], None]
    stopping: asyncio.Event
    nodes: list[NatsServerProcess] = field(default_factory=list, init=False)
    routes: list[str] = field(default_factory=list, init=False)
    restarts: dict[str, int] = field(default_factory=dict, init=False)
    # Each node's config as a function of the quarantined services (rendered again when that changes).
    _renderers: list[Callable[[frozenset[str]], str]] = field(default_factory=list, init=False)
    rendered_quarantine: frozenset[str] = field(default=frozenset(), init=False)
    _quarantine_lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)
    _watchers: list[asyncio.Task[None]] = field(default_factory=list, init=False)
    guard: ConsumerGuard | None = field(default=None, init=False)

    @property
    def replicas(self) -> int:
        """Each stream on 3 nodes of a cluster: an acknowledged event outlives the loss of one."""
        return 1 if self.cluster == 1 else 3

    @property
    def url(self) -> str:
        """Every local node's URL, comma-separated: clients fail over between them (and learn the
        nodes on other hosts from the cluster)."""
        return ",".join(node.url for node in self.local_nodes())

    def local_nodes(self) -> list[NatsServerProcess]:
        """The nodes this host runs: not those handed over to a joined host (nats_handover)."""
        return [node for node in self.nodes if moved_to(node.config_path.parent) is None]

    def folders(self) -> list[Path]:
        """Where each node keeps its config and store: one server in nats/, cluster nodes in nats/nodeN/."""
        nats = self.data_dir / "nats"
        if self.cluster == 1:
            return [nats]
        return [nats / f"node{index}" for index in range(self.cluster)]

    def name(self, node: NatsServerProcess) -> str:
        """`nats-server`, or a cluster node's `nats-server-N` (its log is logs/<name>.log)."""
        return "nats-server" if len(self.nodes) == 1 else f"nats-server-{self.nodes.index(node)}"

    def state(self) -> list[dict[str, Any]]:
        """Each node as `parley status` shows it: where it listens, its pid, how often it was restarted."""
        return [
            {
                "name": self.name(node),
                "url": node.url,
                "route": self.routes[index] if len(self.routes) > 1 else None,
                "pid": node.pid if node.running else None,
                "running": node.running,
                "restarts": self.restarts.get(self.name(node), 0),
                "moved_to": moved_to(node.config_path.parent),
            }
            for index, node in enumerate(self.nodes)
        ]

    def _refuse_other_layout(self) -> None:
        """The events live in one store layout; starting the other would start with an empty log."""
        nats = self.data_dir / "nats"
        single, clustered = (nats / "jetstream").exists(), (nats / "node0" / "jetstream").exists()
        if self.cluster > 1 and single:
            raise RuntimeError(f"{self.data_dir} holds a single nats-server's events; start it without --nats-cluster")
        if self.cluster == 1 and clustered:
            raise RuntimeError(f"{self.data_dir} holds a JetStream cluster's events; start it with --nats-cluster")
        if any(holds_pre_account_streams(folder / "jetstream") for folder in self.folders()):
            raise RuntimeError(
                f"{self.data_dir} holds an event log from before each service had its own NATS account, which this "
                "version cannot read: back it up with the version that made it (`parley backup create`), restore "
                "the backup into a new, empty data folder with this one (`parley backup restore`) and start that "
                "folder, which re-seeds the log"
            )

    async def start(self, pki: Pki, passwords: dict[str, str]) -> None:
        """Every local node started on the last run's ports (new ones the first time)."""
        self._refuse_other_layout()
        self.rendered_quarantine = frozenset(quarantined(self.data_dir))
        store_key = ensure_store_key(self.data_dir / "secrets" / STORE_KEY_FILE)
        folders = self.folders()
        previous = previous_nats_ports(self.data_dir)
        address = host_address()  # other hosts' nodes route here and clients connect here
        previous += [(None, None)] * (len(folders) - len(previous))
        ports = distinct_ports([port for pair in previous[: len(folders)] for port in pair], address)
        client_ports, route_ports = ports[0::2], ports[1::2]
        routes = tuple(f"{address}:{port}" for port in route_ports)
        self.routes = list(routes)
        for index, folder in enumerate(folders):
            ensure_private_dir(folder)
            cluster = None
            if self.cluster > 1:
                cluster = ClusterConfig.routed(
                    name=CLUSTER_NAME, host=address, port=route_ports[index], routes=routes, passwords=passwords
                )
            render = partial(
                render_server_config,
                host=address,
                port=client_ports[index],
                store_dir=folder / "jetstream",
                pki=pki,
                passwords=passwords,
                server_name="parley" if cluster is None else f"parley-node{index}",
                store_cipher_key=store_key,
                cluster=cluster,
            )
            self._renderers.append(_with_quarantine(render))
            config_path = folder / "nats-server.conf"
            write_private_file(config_path, self._renderers[-1](self.rendered_quarantine).encode())
            log_name = "nats-server.log" if cluster is None else f"nats-server-{index}.log"
            self.nodes.append(
                NatsServerProcess(
                    config_path=config_path,
                    host=address,
                    port=client_ports[index],
                    log_path=self.data_dir / "logs" / log_name,
                )
            )
        for node in self.local_nodes():
            await node.start()

    def watch(self) -> None:
        """Every local node supervised from now on (`supervise`)."""
        self._watchers = [asyncio.create_task(self.supervise(node)) for node in self.local_nodes()]

    async def supervise(self, node: NatsServerProcess) -> None:
        """Start a node that died again with its own configuration, port and store, with backoff.

        Services keep reconnecting meanwhile and resume by themselves; sends wait within their
        deadline (parley_core.bus) and are answered once the broker is back. A node that dies
        again soon after its restart waits before the next one, longer each time.
        """
        name = self.name(node)
        loop = asyncio.get_running_loop()
        pause, up_since = 0.0, float("-inf")
        while True:
            code = await node.wait_exit()
            if self.stopping.is_set():
                return
            if (host := moved_to(node.config_path.parent)) is not None:
                self.say(f"{name} stopped (exit {code}): handed over to host {shown(host)}, which runs it now")
                self.on_change()
                return
            died = loop.time()
            pause = _longer(pause) if died - up_since < NATS_STABLE_S else 0.0
            self.restarts[name] = self.restarts.get(name, 0) + 1
            self.say(f"UNHEALTHY: {name} stopped (exit {code}); restarting it with the same configuration and store")
            self.on_change()
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
            self.on_change()

    async def _stopped_within(self, seconds: float) -> bool:
        """Wait `seconds` unless `parley up` is told to stop first; True if it was."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), seconds)
        return self.stopping.is_set()

    async def start_guard(self, nc: Client, watch_nc: Client, quota: int) -> None:
        """Every declared durable made (so no flood keeps one from being made), then the guard
        watching every consumer made from now on (parley_core.consumer_guard), before any service starts."""
        made = await ensure_declared_durables(nc)
        if made:
            self.say(f"declared durable consumers made: {', '.join(made)}")
        self.guard = ConsumerGuard(watch_nc, quota=quota, announce=self.say, quarantine=self._quarantine)
        self.guard.quarantined.update(self.rendered_quarantine)
        await self.guard.start()
        held = self.rendered_quarantine
        quarantined = f"; quarantined: {', '.join(sorted(held))}" if held else ""
        self.say(f"consumer guard on: at most {quota} ephemeral consumers per service and stream{quarantined}")

    async def _quarantine(self, service: str, why: str) -> None:
        """The guard found `service`'s credential flooding: on record, and out of nats-server's config."""
        put_in_quarantine(self.data_dir, service, why)
        await self.apply_quarantine()

    async def stop_guard(self) -> None:
        if self.guard is not None:
            await self.guard.stop()

    async def apply_quarantine(self) -> None:
        """nats-server's config as the quarantine file says (an operator may have lifted one), reloaded."""
        async with self._quarantine_lock:
            held = frozenset(quarantined(self.data_dir))
            if held == self.rendered_quarantine:
                return
            for node, render in zip(self.nodes, self._renderers, strict=True):
                write_private_file(node.config_path, render(held).encode())
            put_in, lifted = held - self.rendered_quarantine, self.rendered_quarantine - held
            self.rendered_quarantine = held  # in the files now: a node started again applies it too
            for node in self.nodes:
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

    async def stop(self) -> None:
        for watcher in self._watchers:
            watcher.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        for node in reversed(self.nodes):
            await node.stop()
        if self.nodes:
            self.say("nats-server stopped" if len(self.nodes) == 1 else "JetStream cluster stopped")


def distinct_ports(kept: list[int | None], address: str) -> list[int]:
    """Each kept port while it is free, else a free one, no two alike: the OS may report one free
    port twice while none of the nodes listens yet, and a free pick must not take a kept port."""
    reserved = {port for port in kept if port}
    chosen: list[int] = []
    for port in kept:
        pick = port_or_free(port, address)
        while pick in chosen or (pick != port and pick in reserved):
            pick = free_port(address)
        chosen.append(pick)
    return chosen


def _with_quarantine(render: Callable[..., str]) -> Callable[[frozenset[str]], str]:
    def rendered(held: frozenset[str]) -> str:
        return render(quarantined=held)

    return rendered


def _longer(pause: float) -> float:
    return min(max(pause * 2, NATS_RESTART_FIRST_S), NATS_RESTART_MAX_S)
