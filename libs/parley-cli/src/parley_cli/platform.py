"""`parley up`: one nats-server (or a JetStream cluster) and one instance of every service, supervised.

First start creates the data folder (0700), the local CA and certificates, and the NATS users;
later starts reuse them, so messages and accounts survive a restart.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from parley_cli.health import check_health
from parley_cli.state import CLIENT_FILE, STATE_FILE, previous_port
from parley_core.bus import EventBus
from parley_core.files import ensure_private_dir, write_private_file
from parley_core.nats_connect import connect_nats
from parley_core.nats_process import NatsServerProcess
from parley_core.natsconf import ROUTE_USER, ClusterConfig, ensure_nats_passwords, render_server_config
from parley_core.net import free_port
from parley_core.pki import Pki, ensure_pki
from parley_core.topology import PLATFORM_USER, SERVICES, STREAMS

# Start order; the gateway last, so its first client finds everything up. Stop in reverse.
START_ORDER = ("auth", "messaging", "storage", "patch-registry", "gateway")
ADDRESS_ENV = {
    "auth": "AUTH_ADDR",
    "messaging": "MESSAGING_ADDR",
    "storage": "STORAGE_ADDR",
    "patch-registry": "REGISTRY_ADDR",
}
DEFAULT_GATEWAY_PORT = 7443
HEALTH_TIMEOUT_S = 60.0
RESTART_LIMIT = 5
SUPERVISE_INTERVAL_S = 0.5
STORE_KEY_FILE = "jetstream-store.key"
CLUSTER_NAME = "parley"
STREAMS_READY_TIMEOUT_S = 60.0


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


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        # As the gRPC server binds: connections of the previous run that linger in TIME_WAIT
        # must not make the gateway move to another port, or its clients could not reconnect.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class ManagedService:
    name: str
    port: int
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    handled: bool = False  # its latest exit has been reported (and acted on)
    log_file: TextIO | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class Platform:
    def __init__(
        self, data_dir: Path, *, gateway_port: int | None = None, nats_cluster: int = 1, out: TextIO = sys.stdout
    ) -> None:
        if nats_cluster != 1 and nats_cluster < 3:
            raise ValueError("a JetStream cluster needs at least 3 nodes to survive the loss of one")
        self.data_dir = data_dir.resolve()
        self.requested_gateway_port = gateway_port
        self.nats_cluster = nats_cluster
        self.out = out
        self.services: dict[str, ManagedService] = {}
        self.nats_nodes: list[NatsServerProcess] = []
        self.pki: Pki | None = None
        self._stopping = asyncio.Event()

    def say(self, text: str) -> None:
        print(f"[parley] {text}", file=self.out, flush=True)

    def _choose_gateway_port(self) -> int:
        previous = previous_port(self.data_dir, "gateway")
        for candidate in (self.requested_gateway_port, previous, DEFAULT_GATEWAY_PORT):
            if candidate and _port_is_free(int(candidate)):
                return int(candidate)
        if self.requested_gateway_port:
            self.say(f"port {self.requested_gateway_port} is busy; the gateway takes a free port instead")
        return free_port()

    async def start(self) -> None:
        ensure_private_dir(self.data_dir)
        for sub in ("logs", "nats", "secrets"):
            ensure_private_dir(self.data_dir / sub)
        self.pki = ensure_pki(self.data_dir / "pki", [*SERVICES, "nats", PLATFORM_USER])
        users = [*SERVICES, PLATFORM_USER, *([ROUTE_USER] if self.nats_cluster > 1 else [])]
        passwords = ensure_nats_passwords(self.data_dir / "secrets" / "nats-passwords.json", users)

        await self._start_nats(passwords)
        where = self.data_dir / "nats" / ("jetstream" if self.nats_cluster == 1 else "node*/jetstream")
        kind = "nats-server" if self.nats_cluster == 1 else f"{self.nats_cluster}-node JetStream cluster (replicas 3)"
        self.say(f"{kind} with JetStream and TLS on {self.nats_url} (store: {where})")

        # The platform identity declares every stream once, before any service needs one.
        nc = await connect_nats(
            url=self.nats_url,
            user=PLATFORM_USER,
            password=passwords[PLATFORM_USER],
            ca_cert=self.pki.ca_cert,
            name="parley-up",
        )
        bus = EventBus(nc, service=PLATFORM_USER, producer="parley-up")
        await bus.ensure_streams_when_ready(STREAMS, replicas=self.replicas, timeout=STREAMS_READY_TIMEOUT_S)
        await nc.close()

        for name in START_ORDER:
            port = self._choose_gateway_port() if name == "gateway" else free_port()
            self.services[name] = ManagedService(name=name, port=port, log_path=self.data_dir / "logs" / f"{name}.log")
        for name in START_ORDER:
            await self._spawn(self.services[name])
        await asyncio.gather(*(self._wait_healthy(s) for s in self.services.values()))
        self._write_state()
        gateway = self.services["gateway"]
        self.say(f"all services are up. Gateway (TLS): {gateway.address}")
        self.say(f"CA certificate for clients: {self.pki.ca_cert}")
        self.say(f"logs: {self.data_dir / 'logs'}")
        self.say("connect the CLI from another terminal, for example (first account: an owner):")
        cli = f".venv/bin/parley --data-dir {self.data_dir}"
        self.say(f"  {cli} admin create-user alice --role owner")
        self.say(f"  {cli} login alice")
        self.say(f"  {cli} --as alice create-channel general")
        self.say(f"  {cli} --as alice chat general")
        self.say("press Ctrl-C to stop everything")

    @property
    def replicas(self) -> int:
        """Each stream on 3 nodes of a cluster: an acknowledged event outlives the loss of one."""
        return 1 if self.nats_cluster == 1 else 3

    @property
    def nats_url(self) -> str:
        """Every node's URL, comma-separated: clients fail over between them."""
        return ",".join(node.url for node in self.nats_nodes)

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

    async def _start_nats(self, passwords: dict[str, str]) -> None:
        assert self.pki is not None
        self._refuse_other_layout()
        identity = self.pki.identity("nats")
        store_key = ensure_store_key(self.data_dir / "secrets" / STORE_KEY_FILE)
        folders = self._nats_folders()
        client_ports = [free_port() for _ in folders]
        route_ports = [free_port() for _ in folders]
        routes = tuple(f"127.0.0.1:{port}" for port in route_ports)
        for index, folder in enumerate(folders):
            ensure_private_dir(folder)
            cluster = None
            if self.nats_cluster > 1:
                cluster = ClusterConfig(
                    name=CLUSTER_NAME,
                    host="127.0.0.1",
                    port=route_ports[index],
                    routes=routes,
                    route_user=ROUTE_USER,
                    route_password=passwords[ROUTE_USER],
                )
            config = render_server_config(
                host="127.0.0.1",
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
            config_path = folder / "nats-server.conf"
            write_private_file(config_path, config.encode())
            log_name = "nats-server.log" if cluster is None else f"nats-server-{index}.log"
            self.nats_nodes.append(
                NatsServerProcess(
                    config_path=config_path,
                    host="127.0.0.1",
                    port=client_ports[index],
                    log_path=self.data_dir / "logs" / log_name,
                )
            )
        for node in self.nats_nodes:
            await node.start()

    def _environment(self, service: ManagedService) -> dict[str, str]:
        assert self.nats_nodes
        env = dict(os.environ)
        env.update(
            {
                "PARLEY_DATA_DIR": str(self.data_dir),
                "PARLEY_NATS_URL": self.nats_url,
                "PARLEY_NATS_REPLICAS": str(self.replicas),
                "PARLEY_LISTEN_HOST": "127.0.0.1",
                "PARLEY_LISTEN_PORT": str(service.port),
                "PARLEY_INSTANCE_ID": f"{service.name}-1",
            }
        )
        for peer, var in ADDRESS_ENV.items():
            env[f"PARLEY_{var}"] = self.services[peer].address
        return env

    async def _spawn(self, service: ManagedService) -> None:
        service.handled = False
        if service.log_file is None:
            service.log_file = open(service.log_path, "a", buffering=1)  # noqa: SIM115, ASYNC230 - kept for the process's life
            os.chmod(service.log_path, 0o600)
        module = "parley_" + service.name.replace("-", "_")
        # A session of its own: Ctrl-C reaches only `parley up`, which then stops services in order.
        service.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            env=self._environment(service),
            stdout=service.log_file,
            stderr=service.log_file,
            start_new_session=True,
        )

    async def _wait_healthy(self, service: ManagedService) -> None:
        assert self.pki is not None
        assert service.process is not None
        deadline = asyncio.get_running_loop().time() + HEALTH_TIMEOUT_S
        delay = 0.05
        while True:
            if service.process.returncode is not None:
                raise RuntimeError(
                    f"{service.name} exited during start; see {service.log_path}:\n{_tail(service.log_path)}"
                )
            if await check_health(self.pki, service=service.name, address=service.address, timeout=1.0) == "SERVING":
                return
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{service.name} not healthy after {HEALTH_TIMEOUT_S:.0f}s; see {service.log_path}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _write_state(self) -> None:
        assert self.pki is not None
        state = {
            "running": True,
            "pid": os.getpid(),
            "nats_url": self.nats_url,
            "services": {
                s.name: {"port": s.port, "address": s.address, "pid": s.process.pid if s.process else None}
                for s in self.services.values()
            },
        }
        write_private_file(self.data_dir / STATE_FILE, json.dumps(state, indent=2).encode())
        client = {"gateway_address": self.services["gateway"].address, "ca_cert": str(self.pki.ca_cert)}
        write_private_file(self.data_dir / CLIENT_FILE, json.dumps(client, indent=2).encode())

    def _mark_stopped(self) -> None:
        """Keep the ports for the next start, but let no client dial a platform that is gone."""
        (self.data_dir / CLIENT_FILE).unlink(missing_ok=True)
        path = self.data_dir / STATE_FILE
        if path.exists():
            state = json.loads(path.read_text())
            state["running"] = False
            write_private_file(path, json.dumps(state, indent=2).encode())

    async def supervise(self) -> None:
        """Report services that stop; restart the ones that crash (a clean exit is an operator's stop).

        Every pass looks at all exits, including those that happened while an earlier restart
        was waiting for health, so several crashes at once are all handled.
        """
        while not self._stopping.is_set():
            for service in self.services.values():
                if service.process is not None and service.process.returncode is not None and not service.handled:
                    service.handled = True
                    await self._on_exit(service, service.process.returncode)
            if not any(s.process and s.process.returncode is None for s in self.services.values()):
                self.say("no service is running; waiting for Ctrl-C")
                await self._stopping.wait()
                return
            # Look again every half second: waiting on each child's wait() missed exits that
            # happened while another service was being restarted.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), SUPERVISE_INTERVAL_S)

    async def _on_exit(self, service: ManagedService, code: int) -> None:
        if code == 0:
            self.say(f"UNHEALTHY: {service.name} stopped (exit 0) and stays down; platform degraded")
            return
        if service.restarts >= RESTART_LIMIT:
            self.say(f"UNHEALTHY: {service.name} crashed (exit {code}) {service.restarts} times; not restarting")
            return
        service.restarts += 1
        self.say(f"UNHEALTHY: {service.name} crashed (exit {code}); restarting ({service.restarts}/{RESTART_LIMIT})")
        await self._spawn(service)
        try:
            await self._wait_healthy(service)
            self._write_state()
            self.say(f"{service.name} is serving again")
        except (RuntimeError, TimeoutError) as exc:
            self.say(str(exc))

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self) -> None:
        self._stopping.set()
        self._mark_stopped()
        for name in reversed(START_ORDER):
            service = self.services.get(name)
            if service is None or service.process is None or service.process.returncode is not None:
                continue
            service.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(service.process.wait(), 20)
            except TimeoutError:
                self.say(f"{name} did not drain in time; killing it")
                service.process.kill()
                await service.process.wait()
            self.say(f"{name} stopped (exit {service.process.returncode})")
        for service in self.services.values():
            if service.log_file is not None:
                service.log_file.close()
        for node in reversed(self.nats_nodes):
            await node.stop()
        if self.nats_nodes:
            self.say("nats-server stopped" if len(self.nats_nodes) == 1 else "JetStream cluster stopped")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


async def run_platform(data_dir: Path, *, gateway_port: int | None, nats_cluster: int = 1) -> int:
    try:
        platform = Platform(data_dir, gateway_port=gateway_port, nats_cluster=nats_cluster)
    except ValueError as exc:
        print(f"[parley] --nats-cluster {nats_cluster}: {exc}", file=sys.stderr)
        return 2
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
