"""Every service served in-process with `serve()`: the `stack` and `closed_stack` fixtures.

Real nats-server (TLS, per-service users), real gRPC servers with mutual TLS, a real SQLite
archive: the same composition as `parley up`, but in one event loop so a test can look at a
service's own access projection and measure how fast it follows the AUTH stream. The service
apps are imported by name, so this library still imports no service.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest_asyncio
from parley.auth.v1 import auth_pb2, auth_pb2_grpc
from parley.gateway.v1 import gateway_pb2_grpc
from parley.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from parley.storage.v1 import storage_pb2, storage_pb2_grpc

from parley_core.access import AccessProjection
from parley_core.config import RegistrationMode, Settings
from parley_core.grpc_channel import secure_channel
from parley_core.pki import Pki
from parley_core.runner import RunContext, ServiceApp, serve
from parley_testing.nats import NatsTestServer

__all__ = [
    "PASSWORD",
    "TIMEOUT_S",
    "Running",
    "Served",
    "Stack",
    "bearer",
    "closed_stack",
    "invite_stack",
    "served_settings",
    "stack",
    "start_service",
    "start_serving",
]

# Stream owners before storage (which reads every stream), the gateway last, once its peers listen.
APPS: dict[str, str] = {
    "auth": "parley_auth.service:AuthApp",
    "messaging": "parley_messaging.service:MessagingApp",
    "patch-registry": "parley_patch_registry.service:PatchRegistryApp",
    "storage": "parley_storage.service:StorageApp",
    "gateway": "parley_gateway.service:GatewayApp",
}


def _app(target: str) -> ServiceApp:
    module, _, name = target.partition(":")
    factory = getattr(importlib.import_module(module), name)
    app: ServiceApp = factory()
    return app


TIMEOUT_S = 30.0
PASSWORD = "a-long-enough-passphrase"  # noqa: S105 - test accounts only


class Captured:
    """Wraps an app to keep its RunContext, so a test can read that service's projection."""

    def __init__(self, app: ServiceApp) -> None:
        self.app = app
        self.ctx: RunContext | None = None

    async def start(self, ctx: RunContext) -> None:
        self.ctx = ctx
        await self.app.start(ctx)

    async def stop(self) -> None:
        await self.app.stop()


@dataclass
class Stack:
    pki: Pki
    data_dir: Path
    ports: dict[str, int] = field(default_factory=dict)
    apps: dict[str, Captured] = field(default_factory=dict)
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def internal(self, service: str, identity: str = "gateway") -> grpc.aio.Channel:
        """Mutual TLS to an internal service, presenting `identity`'s certificate."""
        channel = secure_channel(self.pki, identity=identity, address=f"127.0.0.1:{self.ports[service]}", peer=service)
        self.channels.append(channel)
        return channel

    def auth_as_gateway(self, port: int | None = None) -> auth_pb2_grpc.AuthServiceAsyncStub:
        """Auth (this stack's, or another instance at `port`) as the gateway calls it, so the
        client address a test passes in `x-parley-source` metadata is believed."""
        address = f"127.0.0.1:{port or self.ports['auth']}"
        channel = secure_channel(self.pki, identity="gateway", address=address, peer="auth")
        self.channels.append(channel)
        return auth_pb2_grpc.AuthServiceStub(channel)

    def gateway_channel(self) -> grpc.aio.Channel:
        credentials = grpc.ssl_channel_credentials(root_certificates=self.pki.ca_pem())
        channel = grpc.aio.secure_channel(
            f"127.0.0.1:{self.ports['gateway']}", credentials, options=[("grpc.ssl_target_name_override", "gateway")]
        )
        self.channels.append(channel)
        return channel

    def gateway(self) -> gateway_pb2_grpc.GatewayAsyncStub:
        return gateway_pb2_grpc.GatewayStub(self.gateway_channel())

    def access(self, service: str) -> AccessProjection:
        """That service's own projection of roles, disabled accounts and revoked sessions."""
        ctx = self.apps[service].ctx
        assert ctx is not None
        return ctx.access

    def app(self, service: str) -> Any:
        return self.apps[service].app

    async def login(self, username: str, password: str = PASSWORD) -> auth_pb2.LoginResponse:
        return await self.gateway().Login(
            auth_pb2.LoginRequest(username=username, password=password), timeout=TIMEOUT_S
        )

    async def create_user(self, username: str, role: str) -> auth_pb2.Account:
        """As `parley admin create-user` does: the platform identity over mutual TLS."""
        stub = auth_pb2_grpc.AuthServiceStub(self.internal("auth", identity="platform"))
        return await stub.CreateUser(
            auth_pb2.CreateUserRequest(username=username, password=PASSWORD, role=role), timeout=TIMEOUT_S
        )

    async def set_retention(self, channel_id: str, days: int) -> storage_pb2.SetRetentionPolicyResponse:
        """As `parley retention CHANNEL DAYS` does: messaging records the policy, storage applies it."""
        messaging = messaging_pb2_grpc.MessagingServiceStub(self.internal("messaging", identity="platform"))
        request = messaging_pb2.SetChannelRetentionRequest(channel_id=channel_id, days=days)
        await messaging.SetChannelRetention(request, timeout=TIMEOUT_S)
        storage = storage_pb2_grpc.StorageArchiveServiceStub(self.internal("storage", identity="platform"))
        apply = storage_pb2.SetRetentionPolicyRequest(channel_id=channel_id, days=days)
        return await storage.SetRetentionPolicy(apply, timeout=TIMEOUT_S)


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


@dataclass
class Served:
    """A service app a test serves in-process: stop it with `stop`, await `task`."""

    port: int
    stop: asyncio.Event
    task: asyncio.Task[int]

    async def shutdown(self) -> None:
        self.stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, TIMEOUT_S)


@dataclass
class Running(Served):
    """One service instance started by the stack fixtures."""

    app: Captured


def served_settings(nats_server: NatsTestServer, pki: Pki, tmp_path: Path, service: str, **more: Any) -> Settings:
    """Settings of one service a test serves by itself, on the test's nats-server and a free port,
    in a data folder of its own holding the test CA's certificates (as `parley up` lays one out)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "pki").symlink_to(pki.directory, target_is_directory=True)
    return Settings(
        service=service,
        data_dir=data_dir,
        nats_url=nats_server.url,
        nats_password=nats_server.passwords[service],
        **{"listen_port": 0, **more},
    )


async def start_serving(
    app: ServiceApp, *, service: str, settings: Settings, client_facing: bool = False, timeout: float = TIMEOUT_S
) -> Served:
    """`serve(app)` in a task of its own, once it listens; what made it end early is raised here."""
    stop = asyncio.Event()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(
            app,
            service=service,
            settings=settings,
            client_facing=client_facing,
            stop=stop,
            on_ready=ready.set_result,
        )
    )
    await asyncio.wait_for(asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED), timeout)
    if task.done():
        task.result()
    return Served(ready.result(), stop, task)


async def start_service(
    stack: Stack,
    nats_server: NatsTestServer,
    service: str,
    *,
    registration: RegistrationMode,
    data_dir: Path | None = None,
    listen_port: int = 0,
    listen_port_held: bool = False,
) -> Running:
    """One instance of `service` on the stack's bus and data folder: the stack's own, or a
    second instance beside it (or a restarted one) that a test starts itself. `data_dir` is
    another host's folder (its own secrets and pki); `listen_port_held`: as a node agent that
    holds `listen_port` for it says."""
    settings = Settings(
        service=service,
        data_dir=data_dir or stack.data_dir,
        nats_url=nats_server.url,
        nats_password=nats_server.passwords[service],
        listen_port=listen_port,
        listen_port_held=listen_port_held,
        grace_seconds=5.0,
        registration=registration,
        auth_addr=f"127.0.0.1:{stack.ports.get('auth', 0)}",
        messaging_addr=f"127.0.0.1:{stack.ports.get('messaging', 0)}",
        storage_addr=f"127.0.0.1:{stack.ports.get('storage', 0)}",
        registry_addr=f"127.0.0.1:{stack.ports.get('patch-registry', 0)}",
        # Every test client is 127.0.0.1 and each stub a connection of its own, kept to the end:
        # the per-source cap (tested through the front door in test_connection_flood) stays out.
        client_connections_per_source=1_000_000,
    )
    app = Captured(_app(APPS[service]))
    served = await start_serving(
        app, service=service, settings=settings, client_facing=service == "gateway", timeout=TIMEOUT_S * 2
    )
    return Running(served.port, served.stop, served.task, app=app)


async def start_stack(
    nats_server: NatsTestServer, pki: Pki, tmp_path: Path, *, registration: RegistrationMode
) -> tuple[Stack, list[tuple[asyncio.Event, asyncio.Task[int]]]]:
    data_dir = tmp_path / "data"
    if not data_dir.exists():  # a restart keeps the data folder (and so storage's archive)
        data_dir.mkdir()
        (data_dir / "pki").symlink_to(pki.directory, target_is_directory=True)
    stack = Stack(pki=pki, data_dir=data_dir)
    running: list[tuple[asyncio.Event, asyncio.Task[int]]] = []
    for service in APPS:
        started = await start_service(stack, nats_server, service, registration=registration)
        stack.ports[service] = started.port
        stack.apps[service] = started.app
        running.append((started.stop, started.task))
    return stack, running


async def stop_stack(stack: Stack, running: list[tuple[asyncio.Event, asyncio.Task[int]]]) -> None:
    for channel in stack.channels:
        await channel.close()
    for stop, task in reversed(running):
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, TIMEOUT_S)


@contextlib.asynccontextmanager
async def running_stack(
    nats_server: NatsTestServer, pki: Pki, tmp_path: Path, *, registration: RegistrationMode
) -> AsyncIterator[Stack]:
    started, running = await start_stack(nats_server, pki, tmp_path, registration=registration)
    try:
        yield started
    finally:
        await stop_stack(started, running)


@pytest_asyncio.fixture
async def stack(nats_server: NatsTestServer, pki: Pki, tmp_path: Path) -> AsyncIterator[Stack]:
    """Every service with open self-registration, as the e2e platform fixture runs them."""
    async with running_stack(nats_server, pki, tmp_path, registration="open") as started:
        yield started


@pytest_asyncio.fixture
async def closed_stack(nats_server: NatsTestServer, pki: Pki, tmp_path: Path) -> AsyncIterator[Stack]:
    """Every service with registration by administrators only (the `make run` default)."""
    async with running_stack(nats_server, pki, tmp_path, registration="admin") as started:
        yield started


@pytest_asyncio.fixture
async def invite_stack(nats_server: NatsTestServer, pki: Pki, tmp_path: Path) -> AsyncIterator[Stack]:
    """Every service with registration by single-use invitation."""
    async with running_stack(nats_server, pki, tmp_path, registration="invite") as started:
        yield started
