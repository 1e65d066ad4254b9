"""The service runner: one composition of NATS, the gRPC server, health, reflection and drain.

Every service's `__main__` calls `run_service`; tests call `serve` with the same arguments and
real servers on free ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.metadata
import inspect
import logging
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import grpc
import nats.errors
import nats.js.errors
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from parley.fleet.v1.fleet_pb2 import Distribution, Figure, InstanceHeartbeat

from parley_core import port_share, telemetry
from parley_core.access import AccessProjection, follow_access
from parley_core.bus import EventBus
from parley_core.call_stats import CallStatsInterceptor
from parley_core.config import EventLoop, Settings
from parley_core.connections import cap_connections_per_source
from parley_core.deadline import answering_within
from parley_core.errors import OUTCOME_METADATA, OUTCOME_UNKNOWN, DomainError, OutcomeUnknown, status_for
from parley_core.grpc_channel import secure_channel
from parley_core.inventory import running_distributions
from parley_core.listeners import stop_listening
from parley_core.logs import configure_logging
from parley_core.metrics import MetricsTls, ServiceMetrics
from parley_core.nats_connect import connect_nats
from parley_core.natsconf import ensure_nats_passwords
from parley_core.pki import CertificateMissing, Pki, ensure_pki
from parley_core.ranges import check_ranges
from parley_core.rbac import METHOD_PERMISSIONS, PLATFORM_METHODS
from parley_core.request_stats import RequestStats
from parley_core.tokens import TokenVerifier, bearer_token, follow_signing_keys
from parley_core.topology import GRPC_CALLERS, PLATFORM_USER, heartbeat_subject

log = logging.getLogger(__name__)


# Exit code for a state the service must not run on (sysexits EX_CONFIG); `parley up` shows why.
EX_CONFIG = 78
# Between leaving a shared port and stopping the server: connections accepted just before need
# their TLS handshake and first call (a few round trips).
SHARED_PORT_SETTLE_S = 0.5


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
        each of its services. Ignored once the server drains."""
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


_AioBehaviour = Callable[[Any, "grpc.aio.ServicerContext[Any, Any]"], Any]
Authorize = Callable[[str, "grpc.aio.ServicerContext[Any, Any]"], None]
Deserializer = Callable[[bytes], Any]


@dataclass(frozen=True)
class Undecodable:
    """Stands in for a request whose bytes are not the method's message: gRPC would answer UNKNOWN
    naming a Python exception; the handler answers INVALID_ARGUMENT in plain words instead."""

    method: str

    @property
    def problem(self) -> str:
        return f"the request is not a valid protobuf message of the type {self.method} takes"


def decoding(deserializer: Deserializer | None, method: str) -> Deserializer | None:
    """`deserializer`, returning Undecodable for bytes it cannot decode rather than raising."""
    if deserializer is None:
        return None

    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception:  # protobuf raises DecodeError, and others for some malformed input
            return Undecodable(method)

    return decode


def peer_names(context: grpc.aio.ServicerContext[Any, Any]) -> set[str]:
    return {n.decode() for n in context.auth_context().get("x509_common_name", [])}


def method_permission_check(tokens: TokenVerifier) -> Authorize:
    """Enforces rbac.METHOD_PERMISSIONS for every call, from this service's own projection.

    The platform identity (mutual TLS, operator tooling) may call PLATFORM_METHODS without a
    user token; with a token, the user's permission is checked as for anyone.
    """

    def check(method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if method not in METHOD_PERMISSIONS:
            return
        permission = METHOD_PERMISSIONS[method]
        if permission is None:
            return
        if method in PLATFORM_METHODS and bearer_token(context) is None and PLATFORM_USER in peer_names(context):
            return
        tokens.authorize(context, permission, what=method.rsplit("/", 1)[-1])

    return check


EVENT_LOG_SILENT = (
    "the event log did not answer in time; if this call changes something, the change may or may not "
    "have been made: retry it (a send with the same idempotency key), which never makes it twice"
)


# The event log did not answer: a timeout (nats-py's is a TimeoutError too), a connection
# closed or lost, a stream without a leader. Not a bug of ours; other NATS errors are.
EVENT_LOG_UNANSWERED = (
    TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)


class CallerCheckAndErrors(grpc.aio.ServerInterceptor):
    """Refuses peers not allowed to call this service and maps errors to one gRPC status each.

    Domain errors keep their message; anything unexpected becomes INTERNAL with a reference
    that points to the log line, never a stack trace to the client. Requests that do not decode,
    or whose numbers or times are out of range (parley_core.ranges), are INVALID_ARGUMENT before
    any handler sees them.
    """

    def __init__(self, allowed_peers: tuple[str, ...] | None, authorize: Authorize | None = None) -> None:
        self._allowed = allowed_peers
        self._authorize = authorize

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        allowed = self._allowed
        authorize = self._authorize

        def check_peer(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
            if allowed is None or method.startswith(("/grpc.health.v1.Health/", "/grpc.reflection.")):
                return None
            names = peer_names(context)
            if not names & set(allowed):
                return f"peer {sorted(names) or 'without certificate'} may not call {method}"
            return None

        async def fail(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
            if isinstance(exc, OutcomeUnknown):
                context.set_trailing_metadata(((OUTCOME_METADATA, OUTCOME_UNKNOWN),))
            if isinstance(exc, DomainError):
                await context.abort(status_for(exc), str(exc))
            if isinstance(exc, EVENT_LOG_UNANSWERED):
                # The event log did not answer (a read or a write): no fault of ours to hide behind
                # INTERNAL, and a write may have landed, so the caller is told to retry, not to give up.
                log.warning("event log did not answer in %s: %r", method, exc)
                context.set_trailing_metadata(((OUTCOME_METADATA, OUTCOME_UNKNOWN),))
                await context.abort(grpc.StatusCode.UNAVAILABLE, EVENT_LOG_SILENT)
            if isinstance(exc, grpc.aio.AioRpcError):
                # A downstream refusal passes through with its own status and message.
                await context.abort(exc.code(), exc.details() or exc.code().name)
            ref = uuid.uuid4().hex[:12]
            log.error("unhandled error in %s (ref %s)", method, ref, exc_info=exc)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error (reference {ref})")

        if handler.unary_unary is not None:
            # The stubs describe synchronous handlers; on a grpc.aio server they are coroutines.
            inner_unary = cast(_AioBehaviour, handler.unary_unary)

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                if (problem := check_peer(context)) is not None:
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, problem)
                if isinstance(request, Undecodable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.problem)
                try:
                    if authorize is not None:
                        authorize(method, context)
                    check_ranges(request)
                    with answering_within(context.time_remaining()):
                        return await inner_unary(request, context)
                except (grpc.aio.AbortError, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    await fail(context, exc)

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=decoding(handler.request_deserializer, method),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_stream = cast(_AioBehaviour, handler.unary_stream)

            async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                if (problem := check_peer(context)) is not None:
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, problem)
                if isinstance(request, Undecodable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.problem)
                try:
                    if authorize is not None:
                        authorize(method, context)
                    check_ranges(request)
                    if inspect.iscoroutinefunction(inner_stream):
                        # Writes with context.write() and returns None, as grpc's Health.Watch does.
                        await inner_stream(request, context)
                    else:
                        async for item in inner_stream(request, context):
                            yield item
                except (grpc.aio.AbortError, asyncio.CancelledError, GeneratorExit):
                    raise
                except Exception as exc:
                    await fail(context, exc)

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=decoding(handler.request_deserializer, method),
                response_serializer=handler.response_serializer,
            )
        return handler


class PerMethodHandlers(grpc.aio.ServerInterceptor):
    """Runs the interceptors once per method and keeps the handler they make.

    grpc.aio asks the interceptors for a handler on every call, and each builds its wrapper
    anew; every wrapper here depends on the method alone (the caller, metadata and request
    are read inside it, per call), so the chain is built on a method's first call only.
    """

    def __init__(self, interceptors: Sequence[grpc.aio.ServerInterceptor]) -> None:
        self._interceptors = tuple(interceptors)
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        if (handler := self._handlers.get(method)) is not None:
            return handler
        handler = await self._through(0, continuation, handler_call_details)
        if handler is not None:
            self._handlers[method] = handler
        return handler

    async def _through(
        self,
        index: int,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        if index == len(self._interceptors):
            return await continuation(details)

        async def following(d: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
            return await self._through(index + 1, continuation, d)

        return await self._interceptors[index].intercept_service(following, details)


def client_connection_options(settings: Settings) -> list[tuple[str, int]]:
    """What bounds a client's connection to the client-facing server: one that has not finished
    its TLS handshake in time is closed (gRPC's default is 120 s), and one with no call in flight
    for client_idle_seconds gets a graceful GOAWAY (a live stream is a call in flight, so it
    stays; a client reconnects by itself for its next call). How many one source may hold at
    once is parley_core.connections' cap."""
    return [
        ("grpc.server_handshake_timeout_ms", int(settings.client_handshake_timeout_seconds * 1000)),
        ("grpc.max_connection_idle_ms", int(settings.client_idle_seconds * 1000)),
    ]


def _port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def _server_credentials(pki: Pki, service: str, *, client_facing: bool) -> grpc.ServerCredentials:
    cert, key = pki.read(service)
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=None if client_facing else pki.ca_pem(), require_client_auth=not client_facing
    )


@functools.cache
def _distributions(root: str) -> list[Distribution]:
    """What an instance runs does not change while it runs: read once."""
    return running_distributions(root)


async def _heartbeat(ctx: RunContext, health: str) -> None:
    """One heartbeat: SERVING, NOT_SERVING (draining), or STOPPED, the last word of an instance
    that stopped on purpose (it leaves the fleet view; one that falls silent shows as stale)."""
    sent = Timestamp()
    sent.GetCurrentTime()
    beat = InstanceHeartbeat(
        service=ctx.service,
        version=ctx.version,
        instance_id=ctx.settings.instance_id,
        host=ctx.settings.host_name,
        health=health,
        distributions=_distributions(f"parley-{ctx.service}"),
        sent_at=sent,
        requests_total=ctx.stats.requests,
        errors_total=ctx.stats.errors,
        p99_latency_ms=ctx.stats.take_p99_ms(),
        address=ctx.address,
        latency_buckets=ctx.stats.latency_buckets,
        figures=[Figure(name=f.name, labels=f.labels, value=f.value) for f in ctx.metrics.heartbeat_figures()],
    )
    try:
        await ctx.bus.nc.publish(heartbeat_subject(ctx.service, ctx.settings.instance_id), beat.SerializeToString())
    except Exception as exc:  # a missed heartbeat is only a late one
        log.warning("heartbeat not sent: %s", exc)


async def _heartbeats(ctx: RunContext, stop: asyncio.Event) -> None:
    while True:
        serving = not stop.is_set()
        await _heartbeat(ctx, "SERVING" if serving else "NOT_SERVING")
        if not serving:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), ctx.settings.heartbeat_seconds)


async def serve(
    app: ServiceApp,
    *,
    service: str,
    settings: Settings,
    client_facing: bool = False,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[int], None] | None = None,
) -> int:
    """Run one service until `stop` is set (or SIGTERM/SIGINT), then drain. Returns the exit code."""
    version = importlib.metadata.version(f"parley-{service}")
    stop = stop or asyncio.Event()
    try:
        pki = ensure_pki(settings.pki_dir, [service])
    except CertificateMissing as exc:
        raise RefusedToStart(str(exc)) from None
    password = settings.nats_password or ensure_nats_passwords(settings.nats_passwords_file, [service])[service]
    telemetry.setup_telemetry(
        service=service,
        version=version,
        instance_id=settings.instance_id,
        exporter=settings.trace_exporter,
        otlp_endpoint=settings.otlp_endpoint,
    )
    nc = await connect_nats(
        url=settings.nats_url,
        user=settings.nats_user or service,
        password=password,
        ca_cert=pki.ca_cert,
        name=f"{service}-{settings.instance_id}",
    )
    bus = EventBus(nc, service=service, producer=f"{service}@{version}")
    metrics = ServiceMetrics(service, version)
    bus.metrics = metrics
    own_streams = (s for s in settings.streams if s.owner in (service, "*"))
    await bus.ensure_streams(own_streams, replicas=settings.nats_replicas)

    access = AccessProjection()
    tokens = TokenVerifier(access)
    stats = RequestStats()
    # gRPC sets SO_REUSEPORT by default: a second platform could then share our port unseen. Only
    # an instance given a shared port (which the node agent claimed for this platform) sets it.
    shared = settings.shared_listen_address
    options: list[tuple[str, int]] = [("grpc.so_reuseport", 1 if shared else 0)]
    if settings.max_connection_age_seconds > 0:
        # Graceful GOAWAY per connection while the server keeps serving: calls racing the GOAWAY
        # are still handled, unlike calls racing a server shutdown (which grpc cancels).
        options += [
            ("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * 1000)),
            ("grpc.max_connection_age_grace_ms", int(settings.grace_seconds * 1000)),
        ]
    if client_facing:
        options += client_connection_options(settings)
    call_stats = CallStatsInterceptor(metrics, stats)
    interceptors: tuple[grpc.aio.ServerInterceptor, ...] = (
        *telemetry.server_interceptors(),
        call_stats,
        CallerCheckAndErrors(None if client_facing else GRPC_CALLERS[service], method_permission_check(tokens)),
    )
    server = grpc.aio.server(options=options, interceptors=[PerMethodHandlers(interceptors)])
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    ctx = RunContext(
        settings=settings,
        service=service,
        version=version,
        bus=bus,
        pki=pki,
        server=server,
        health=health,
        tokens=tokens,
        access=access,
        stats=stats,
        interceptors=interceptors,
        metrics=metrics,
    )
    keys = await follow_signing_keys(bus, tokens)
    access_replay = await follow_access(bus, access)
    try:
        await app.start(ctx)
    except BaseException:
        # A refusal (or any failure) to start: close the connection, or its reconnecting and its
        # subscriptions outlive the service in a process that goes on (an in-process test).
        await nc.close()
        raise
    await keys.wait_caught_up()
    await access_replay.wait_caught_up()
    health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    reflection.enable_server_reflection([*ctx.service_names, health_name, reflection.SERVICE_NAME], server)
    credentials = _server_credentials(pki, service, client_facing=client_facing)
    port = server.add_secure_port(f"{settings.listen_host}:{settings.listen_port}", credentials)
    share = port_share.ShareFile(shared, Path(settings.shared_port_share_file)) if shared else None
    if shared:
        # Listened on only from here, once ready; the drain leaves it before the server stops.
        server.add_secure_port(shared, credentials)
    if share is not None and settings.shared_port_share_file:
        share.apply()  # a roll-out's new instance: its weight before its first connection
    await server.start()
    ctx.address = f"{settings.listen_host}:{port}"
    await ctx.set_serving(True)
    if settings.metrics_listen:
        own = pki.identity(service)
        metrics_address = metrics.serve(
            settings.metrics_listen,
            targets_dir=settings.data_dir / "metrics" / "targets",
            instance_id=settings.instance_id,
            tls=MetricsTls(cert=own.cert, key=own.key, client_ca=pki.ca_cert) if settings.metrics_tls else None,
        )
        log.info("metrics served", extra={"address": metrics_address})
    log.info("serving", extra={"port": port, "shared": shared, "version": version})
    if on_ready is not None:
        on_ready(port)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread (tests): caller sets stop
            loop.add_signal_handler(sig, stop.set)
    heartbeat_task = asyncio.create_task(_heartbeats(ctx, stop))
    share_task = (
        asyncio.create_task(share.follow(stop)) if share is not None and settings.shared_port_share_file else None
    )
    connection_cap: asyncio.Task[None] | None = None
    if client_facing:
        ctx.client_ports.update({port, *([_port_of(shared)] if shared else [])})
        connection_cap = asyncio.create_task(
            cap_connections_per_source(ctx.client_ports, settings.client_connections_per_source, stop)
        )
    await stop.wait()

    log.info("draining", extra={"grace_seconds": settings.grace_seconds})
    await health.enter_graceful_shutdown()
    if share_task is not None:
        await share_task
    if shared and stop_listening(shared):
        # Out of the shared port first: new clients go to the other instances, and those accepted
        # just before deliver their calls before the server stops (parley_core.listeners).
        log.info("left the shared port", extra={"address": shared, "settle_seconds": SHARED_PORT_SETTLE_S})
        await asyncio.sleep(SHARED_PORT_SETTLE_S)
    # Refuses new calls at once; in-flight calls get the grace period to finish.
    call_stats.server_stopping()
    await server.stop(settings.grace_seconds)
    await app.stop()
    await bus.stop_consumers()
    await heartbeat_task
    await _heartbeat(ctx, "STOPPED")
    if connection_cap is not None:
        await connection_cap
    await ctx.close_channels()
    await nc.drain()
    metrics.stop()
    telemetry.shutdown_tracing()
    log.info("drained; exiting")
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(sig)
    return 0


def event_loop(kind: EventLoop) -> Callable[[], asyncio.AbstractEventLoop]:
    """The loop a service runs on. uvloop (libuv) does the NATS connection's TLS and socket work
    in C: in the bench profile the standard loop's SSL transport was most of messaging's and
    storage's NATS cost. `asyncio` keeps the standard loop."""
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run_service(app_factory: Callable[[], ServiceApp], *, service: str, client_facing: bool = False) -> None:
    """Process entry point: settings from the environment, JSON logs, exit code from the drain."""
    settings = Settings(service=service)
    configure_logging(service=service, instance_id=settings.instance_id, level=settings.log_level)
    try:
        with asyncio.Runner(loop_factory=event_loop(settings.event_loop)) as runner:
            code = runner.run(serve(app_factory(), service=service, settings=settings, client_facing=client_facing))
    except RefusedToStart as exc:
        log.error("refusing to start: %s", exc)  # one JSON line on stderr, which the agent keeps in the log
        raise SystemExit(EX_CONFIG) from None
    raise SystemExit(code)
