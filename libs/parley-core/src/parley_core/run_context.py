"""What a service plugs into the runner (ServiceApp) and what the runner hands it (RunContext)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from parley_core.access import AccessProjection
from parley_core.bus import EventBus
from parley_core.config import Settings
from parley_core.grpc_channel import secure_channel
from parley_core.metrics import ServiceMetrics
from parley_core.pki import Pki
from parley_core.request_stats import RequestStats
from parley_core.tokens import TokenVerifier


class RefusedToStart(Exception):
    """Raised by an app's start(): running on what it found would lose or corrupt data."""


class ServiceApp(Protocol):
    """What a service plugs into the runner."""

    async def start(self, ctx: RunContext) -> None:
        """Register servicers on ctx.server and start projections and consumers."""

    async def stop(self) -> None:
        """Release what start() took, after the gRPC server has drained."""


@dataclass
class RunContext:
    settings: Settings
    service: str
    version: str
    bus: EventBus
    pki: Pki
    server: grpc.aio.Server
    health: HealthServicer
    tokens: TokenVerifier
    service_names: list[str] = field(default_factory=list)
    # The service's own projection of roles, disabled accounts and revoked sessions.
    access: AccessProjection = field(default_factory=AccessProjection)
    stats: RequestStats = field(default_factory=RequestStats)
    # The instance's Prometheus registry: services add their own figures (metrics.py).
    metrics: ServiceMetrics = field(default_factory=lambda: ServiceMetrics(""))
    address: str = ""  # host:port once the server listens, for heartbeats
    # The server's interceptors, for a second transport of the same calls (the gateway's Connect
    # endpoint for browsers) to run them exactly as the gRPC server does.
    interceptors: tuple[grpc.aio.ServerInterceptor, ...] = ()
    # Client-facing ports whose connections count against the per-source cap (parley_core.connections):
    # the gRPC server's; an app adds its others (the gateway's browser port).
    client_ports: set[int] = field(default_factory=set)
    _channels: list[grpc.aio.Channel] = field(default_factory=list)

    def add_service_name(self, full_name: str) -> None:
        self.service_names.append(full_name)

    async def set_serving(self, serving: bool) -> None:
        """The health every check sees (`parley status`, the node agent): the whole server and
        each of its services. Ignored once the server drains; never SERVING once a projection
        of this process halted (parley_core.projection_dispatch)."""
        serving = serving and self.bus.halted is None
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    def channel_to(self, address: str, peer: str, *, context_in_metadata: bool = False) -> grpc.aio.Channel:
        """A mutual-TLS channel to `peer`, whose certificate must name it (`context_in_metadata`:
        see `secure_channel`)."""
        channel = secure_channel(
            self.pki, identity=self.service, address=address, peer=peer, context_in_metadata=context_in_metadata
        )
        self._channels.append(channel)
        return channel

    async def close_channels(self) -> None:
        for channel in self._channels:
            await channel.close()
