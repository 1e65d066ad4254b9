"""Pytest fixtures that start a real, TLS-only nats-server with JetStream and Parley's users.

Integration tests talk to the same broker configuration the platform runs, so a permission
missing from ``topology`` fails a test instead of a deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.js import JetStreamContext

from parley_core import topology
from parley_core.files import ensure_private_dir
from parley_core.nats_connect import connect_nats
from parley_core.nats_process import NatsServerProcess
from parley_core.natsconf import ROUTE_USER, ClusterConfig, ensure_nats_passwords, render_server_config
from parley_core.net import free_port
from parley_core.pki import Pki, ensure_pki

__all__ = [
    "NatsTestCluster",
    "NatsTestServer",
    "nats_server",
    "pki",
    "start_nats_cluster",
    "start_nats_test_server",
    "stream_states",
]

# A test client's close is bounded: one stuck flushing to a server under a flood must not hang teardown.
CLOSE_TIMEOUT_S = 10.0
NATS_USERS: tuple[str, ...] = (*topology.SERVICES, topology.PLATFORM_USER)
_HOST = "127.0.0.1"
_START_ATTEMPTS = 3


@dataclass
class OpenClients:
    """A test broker's client connections, closed before it stops so that none keeps reconnecting
    to a stopped server."""

    opened: list[Client] = field(default_factory=list)

    async def connect(self, *, url: str, user: str, password: str, ca_cert: Path, **kwargs: Any) -> Client:
        kwargs.setdefault("name", f"test-{user}")
        client = await connect_nats(url=url, user=user, password=password, ca_cert=ca_cert, **kwargs)
        self.opened.append(client)
        return client

    async def close(self) -> None:
        clients, self.opened = self.opened, []
        for client in clients:
            if not client.is_closed:
                with contextlib.suppress(TimeoutError):  # a client stuck flushing: the server goes anyway
                    await asyncio.wait_for(client.close(), CLOSE_TIMEOUT_S)


@dataclass
class NatsTestServer:
    """A running test broker and a way to connect to it as any Parley user."""

    url: str
    passwords: dict[str, str]
    ca_cert: Path
    process: NatsServerProcess
    # Its config again, with some services quarantined (the consumer guard's sanction).
    render: Callable[[Iterable[str]], str] = field(default=lambda _quarantined: "", repr=False)
    clients: OpenClients = field(default_factory=OpenClients, repr=False)

    async def quarantine(self, services: Iterable[str]) -> None:
        """Rewrite its config with these services quarantined (none: lifted) and reload it, as the
        platform does when its consumer guard finds a service flooding a stream."""
        self.process.config_path.write_text(self.render(services), encoding="utf-8")
        await self.process.reload()

    async def connect(self, user: str, **kwargs: Any) -> Client:
        """Connect as ``user``; the client is closed when the test's server stops."""
        return await self.clients.connect(
            url=self.url, user=user, password=self.passwords[user], ca_cert=self.ca_cert, **kwargs
        )

    @contextlib.asynccontextmanager
    async def frozen(self) -> AsyncIterator[None]:
        """The broker stopped (SIGSTOP: it takes what is sent but answers nothing), then resumed.

        Waits until the kernel shows every thread stopped: the signal takes effect as each
        thread next runs, and on a loaded machine the server answered a publish sent after kill()."""
        pid = self.process.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            await _until_stopped(pid)
            yield
        finally:
            os.kill(pid, signal.SIGCONT)

    async def close_clients(self) -> None:
        """Close clients first so none of them keeps reconnecting to a stopped server."""
        await self.clients.close()


def _thread_states(pid: int) -> set[str]:
    states = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/task/{task}/stat").read_text()
            states.add(stat.rpartition(")")[2].split()[0])
    return states


async def _until_stopped(pid: int, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout
    while _thread_states(pid) != {"T"}:
        if loop.time() > give_up:
            raise TimeoutError(f"nats-server {pid} not stopped after SIGSTOP: thread states {_thread_states(pid)}")
        await asyncio.sleep(0.005)


async def start_nats_test_server(pki: Pki, directory: Path) -> NatsTestServer:
    """Start a broker with its config, passwords, JetStream store and log under ``directory``.

    The free port is only reserved until nats-server binds it, so a start that loses the race
    to another process is retried on a new port.
    """
    ensure_private_dir(directory)
    passwords = ensure_nats_passwords(directory / "passwords.json", NATS_USERS)
    error: RuntimeError | None = None
    for attempt in range(_START_ATTEMPTS):
        port = free_port(_HOST)
        config_path = directory / "nats.conf"

        def render(quarantined: Iterable[str], port: int = port) -> str:
            return render_server_config(
                host=_HOST,
                port=port,
                store_dir=directory / "jetstream",
                pki=pki,
                passwords=passwords,
                server_name=f"parley-test-{port}",
                quarantined=quarantined,
            )

        config_path.write_text(render(()), encoding="utf-8")
        config_path.chmod(0o600)
        process = NatsServerProcess(
            config_path=config_path, host=_HOST, port=port, log_path=directory / f"nats-{attempt}.log"
        )
        try:
            await process.start()
        except RuntimeError as exc:
            error = exc
            continue
        return NatsTestServer(url=process.url, passwords=passwords, ca_cert=pki.ca_cert, process=process, render=render)
    assert error is not None
    raise error


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """One CA and certificate per service, the broker and the platform user for the session."""
    return ensure_pki(
        tmp_path_factory.mktemp("pki"),
        [*topology.SERVICES, topology.NATS_IDENTITY, topology.PLATFORM_USER, topology.METRICS_SCRAPER],
    )


@pytest_asyncio.fixture
async def nats_server(pki: Pki, tmp_path: Path) -> AsyncIterator[NatsTestServer]:
    """A fresh broker with an empty JetStream store for each test."""
    server = await start_nats_test_server(pki, tmp_path / "nats")
    try:
        yield server
    finally:
        await server.close_clients()
        await server.process.stop()


CLUSTER_NAME = "parley-test"


@dataclass
class NatsTestCluster:
    """A JetStream cluster of nats-server processes on free ports, each node restartable."""

    nodes: list[NatsServerProcess]
    server_names: list[str]
    passwords: dict[str, str]
    ca_cert: Path
    clients: OpenClients = field(default_factory=OpenClients, repr=False)

    @property
    def url(self) -> str:
        """Every node, comma-separated, as PARLEY_NATS_URL takes a cluster."""
        return ",".join(node.url for node in self.nodes)

    async def connect(self, user: str, **kwargs: Any) -> Client:
        return await self.clients.connect(
            url=self.url, user=user, password=self.passwords[user], ca_cert=self.ca_cert, **kwargs
        )

    def node_named(self, server_name: str) -> NatsServerProcess:
        return self.nodes[self.server_names.index(server_name)]

    async def restart(self, node: NatsServerProcess) -> NatsServerProcess:
        """Start a stopped node again with its own config, store and ports."""
        fresh = NatsServerProcess(config_path=node.config_path, host=node.host, port=node.port, log_path=node.log_path)
        await fresh.start()
        self.nodes[self.nodes.index(node)] = fresh
        return fresh

    async def stop(self) -> None:
        await self.clients.close()
        for node in self.nodes:
            if node.running:
                await node.stop()


async def start_nats_cluster(pki: Pki, directory: Path, *, size: int = 3) -> NatsTestCluster:
    """Start `size` TLS nodes routed to each other, with Parley's users, and wait for them all."""
    ensure_private_dir(directory)
    passwords = ensure_nats_passwords(directory / "passwords.json", [*NATS_USERS, ROUTE_USER])
    client_ports = [free_port(_HOST) for _ in range(size)]
    route_ports = [free_port(_HOST) for _ in range(size)]
    routes = tuple(f"{_HOST}:{port}" for port in route_ports)
    nodes: list[NatsServerProcess] = []
    names: list[str] = []
    for index in range(size):
        node_dir = ensure_private_dir(directory / f"node{index}")
        name = f"parley-node{index}"
        config = render_server_config(
            host=_HOST,
            port=client_ports[index],
            store_dir=node_dir / "jetstream",
            pki=pki,
            passwords=passwords,
            server_name=name,
            cluster=ClusterConfig.routed(
                name=CLUSTER_NAME, host=_HOST, port=route_ports[index], routes=routes, passwords=passwords
            ),
        )
        config_path = node_dir / "nats.conf"
        config_path.write_text(config, encoding="utf-8")
        config_path.chmod(0o600)
        nodes.append(
            NatsServerProcess(
                config_path=config_path, host=_HOST, port=client_ports[index], log_path=node_dir / "nats.log"
            )
        )
        names.append(name)
    cluster = NatsTestCluster(nodes=nodes, server_names=names, passwords=passwords, ca_cert=pki.ca_cert)
    try:
        for node in nodes:
            await node.start()
    except BaseException:
        await cluster.stop()
        raise
    return cluster


async def stream_states(js: JetStreamContext) -> dict[str, tuple[int, int, int]]:
    """Every stream's (messages, first sequence, last sequence): compared before and after an
    attack, they show that it removed or added nothing."""
    states = {}
    for spec in topology.STREAMS:
        state = (await js.stream_info(spec.name)).state
        states[spec.name] = (state.messages, state.first_seq, state.last_seq)
    return states
