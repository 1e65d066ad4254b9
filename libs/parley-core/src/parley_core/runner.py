"""The service runner: one composition of NATS, the gRPC server, health, reflection and drain.

Every service's `__main__` calls `run_service`; tests call `serve` with the same arguments and
real servers on free ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.metadata
import logging
import signal
from collections.abc import Callable
from functools import partial
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from parley_core import port_share, telemetry
from parley_core.access import AccessProjection, follow_access
from parley_core.bus import EventBus, ProjectionHalted
from parley_core.call_stats import CallStatsInterceptor
from parley_core.config import EventLoop, Settings
from parley_core.connections import connection_cap_job
from parley_core.heartbeats import heartbeat_job, send_heartbeat
from parley_core.listeners import stop_listening
from parley_core.logs import configure_logging
from parley_core.metrics import MetricsTls, ServiceMetrics
from parley_core.nats_connect import connect_nats
from parley_core.natsconf import ensure_nats_passwords
from parley_core.pki import CertificateMissing, Pki, ensure_pki
from parley_core.request_stats import RequestStats
from parley_core.run_context import RefusedToStart, RunContext, ServiceApp
from parley_core.server_interceptors import CallerCheckAndErrors, PerMethodHandlers, method_permission_check
from parley_core.tokens import TokenVerifier, follow_signing_keys
from parley_core.topology import grpc_callers

# What services import from here: the runner's own names and what a service plugs into it.
__all__ = ["EX_CONFIG", "RefusedToStart", "RunContext", "ServiceApp", "run_service", "serve"]

log = logging.getLogger(__name__)


# Exit code for a state the service must not run on (sysexits EX_CONFIG); `parley up` shows why.
EX_CONFIG = 78
# Between leaving a shared port and stopping the server: connections accepted just before need
# their TLS handshake and first call (a few round trips).
SHARED_PORT_SETTLE_S = 0.5


def handshake_options(settings: Settings) -> list[tuple[str, int]]:
    """Every server, client-facing or internal, closes a connection that has not finished its TLS
    handshake in time (gRPC's default is 120 s): a peer that can reach an internal port without
    a certificate cannot hold connections open by never speaking."""
    return [("grpc.server_handshake_timeout_ms", int(settings.client_handshake_timeout_seconds * 1000))]


def client_connection_options(settings: Settings) -> list[tuple[str, int]]:
    """What else bounds a client's connection to the client-facing server: one with no call in
    flight for client_idle_seconds gets a graceful GOAWAY (a live stream is a call in flight, so
    it stays; a client reconnects by itself for its next call). How many one source may hold at
    once is parley_core.connections' cap."""
    return [("grpc.max_connection_idle_ms", int(settings.client_idle_seconds * 1000))]


def _port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def _server_credentials(pki: Pki, service: str, *, client_facing: bool) -> grpc.ServerCredentials:
    cert, key = pki.read(service)
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=None if client_facing else pki.ca_pem(), require_client_auth=not client_facing
    )


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
    # an instance whose ports the node agent holds for it (claimed for this platform) sets it.
    shared = settings.shared_listen_address
    options: list[tuple[str, int]] = [("grpc.so_reuseport", 1 if shared or settings.listen_port_held else 0)]
    if settings.max_connection_age_seconds > 0:
        # Graceful GOAWAY per connection while the server keeps serving: calls racing the GOAWAY
        # are still handled, unlike calls racing a server shutdown (which grpc cancels).
        options += [
            ("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * 1000)),
            ("grpc.max_connection_age_grace_ms", int(settings.grace_seconds * 1000)),
        ]
    options += handshake_options(settings)
    if client_facing:
        options += client_connection_options(settings)
    call_stats = CallStatsInterceptor(metrics, stats)
    interceptors: tuple[grpc.aio.ServerInterceptor, ...] = (
        *telemetry.server_interceptors(),
        call_stats,
        CallerCheckAndErrors(
            None if client_facing else partial(grpc_callers, service), method_permission_check(tokens)
        ),
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
    bus.on_halt = lambda _halt: ctx.set_serving(False)
    # The process's one replay of AUTH: these, and the app's own projections of it (added in
    # start), are started by the app or just after it.
    follow_signing_keys(bus, tokens)
    auth_replay = follow_access(bus, access)
    try:
        await app.start(ctx)
        await bus.start_following()
        await auth_replay.wait_caught_up()
    except ProjectionHalted as exc:  # logged where it halted; the agent shows why it did not start
        await nc.close()
        raise RefusedToStart(str(exc)) from None
    except BaseException:
        # A refusal (or any failure) to start: close the connection, or its reconnecting and its
        # subscriptions outlive the service in a process that goes on (an in-process test).
        await nc.close()
        raise
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
    ctx.address = settings.front_door_address or f"{settings.listen_host}:{port}"
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
    jobs = [heartbeat_job(ctx)]
    if share is not None and settings.shared_port_share_file:
        jobs.append(share.following())
    if client_facing:
        ctx.client_ports.update({port, *([_port_of(shared)] if shared else [])})
        jobs.append(connection_cap_job(ctx.client_ports, settings.client_connections_per_source))
    for job in jobs:
        job.start()
    await stop.wait()

    log.info("draining", extra={"grace_seconds": settings.grace_seconds})
    for job in jobs:  # the connection cap too: clients leave as the server drains
        await job.stop()
    await send_heartbeat(ctx, "NOT_SERVING")  # out of the roll-out gates' and the front doors' view
    await health.enter_graceful_shutdown()
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
    await send_heartbeat(ctx, "STOPPED")
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


def _freeze_heap(_port: int) -> None:
    """Once serving, what start-up made (modules, descriptors: about 80,000 objects in the gateway)
    leaves the garbage collector's sight, so a full collection scans only what came later: it
    scanned all of it, 14 to 52 ms of CPU while every call in flight waited. Only in a service's
    own process: a test process serves many times, and would keep each test's objects for good."""
    gc.collect()
    gc.freeze()


def run_service(app_factory: Callable[[], ServiceApp], *, service: str, client_facing: bool = False) -> None:
    """Process entry point: settings from the environment, JSON logs, exit code from the drain."""
    settings = Settings(service=service)
    configure_logging(service=service, instance_id=settings.instance_id, level=settings.log_level)
    try:
        with asyncio.Runner(loop_factory=event_loop(settings.event_loop)) as runner:
            serving = serve(
                app_factory(), service=service, settings=settings, client_facing=client_facing, on_ready=_freeze_heap
            )
            code = runner.run(serving)
    except RefusedToStart as exc:
        log.error("refusing to start: %s", exc)  # one JSON line on stderr, which the agent keeps in the log
        raise SystemExit(EX_CONFIG) from None
    raise SystemExit(code)
