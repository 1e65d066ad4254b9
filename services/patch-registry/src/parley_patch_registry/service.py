"""The patch registry's composition: fleet view, TUF repository, advisories, roll-outs, APIs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import grpc
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from parley.fleet.v1 import fleet_pb2, fleet_pb2_grpc
from parley.patch.v1 import patch_pb2, patch_pb2_grpc
from parley.storage.v1 import storage_pb2, storage_pb2_grpc
from prometheus_client import Gauge

from parley_core.config import REGISTRY_FOLDER
from parley_core.errors import InvalidArgument, Unavailable
from parley_core.jobs import PeriodicJob, every
from parley_core.runner import RunContext
from parley_core.topology import HEARTBEATS_FILTER
from parley_patch_registry.api import PatchApi
from parley_patch_registry.fleet_view import FleetView
from parley_patch_registry.health import service_health
from parley_patch_registry.key_store import KeyStore
from parley_patch_registry.platform_health import platform_health
from parley_patch_registry.priorities import PRIORITIES
from parley_patch_registry.registry import Registry, open_repository
from parley_patch_registry.rollout import STATES
from parley_patch_registry.schemas import SchemaCensus, StoredSchemas
from parley_patch_registry.settings import RegistrySettings
from parley_patch_registry.tuf_http import RepositoryHttpServer

STALE_AFTER_BEATS = 3
# GetServiceHealth's window and steps (the console's Health charts).
DEFAULT_HEALTH_WINDOW_S, MIN_HEALTH_WINDOW_S, MAX_HEALTH_WINDOW_S = 600, 60, 3600
DEFAULT_HEALTH_POINTS, MAX_HEALTH_POINTS = 30, 120
FINDINGS_INTERVAL_S = 5.0
log = logging.getLogger(__name__)

__all__ = ["FleetView", "PatchRegistryApp", "storage_schema_census"]


def storage_schema_census(archive: storage_pb2_grpc.StorageArchiveServiceAsyncStub | None) -> SchemaCensus:
    """The archive's event schema versions, from the storage service (None: no address configured)."""

    async def census() -> list[StoredSchemas]:
        if archive is None:
            raise Unavailable("cannot check event schemas: no storage address (PARLEY_STORAGE_ADDR) is configured")
        try:
            response = await archive.GetSchemaVersions(storage_pb2.GetSchemaVersionsRequest(), timeout=10.0)
        except grpc.aio.AioRpcError as error:
            raise Unavailable(
                f"cannot check which event schemas the archive holds: storage answered {error.code().name} "
                f"({error.details()}); try again once storage is serving"
            ) from None
        return [StoredSchemas(v.stream, v.event_type, v.oldest_schema_version, v.events) for v in response.versions]

    return census


class PatchRegistryApp(fleet_pb2_grpc.FleetServiceServicer):
    def __init__(self, settings: RegistrySettings | None = None) -> None:
        self.settings = settings or RegistrySettings()
        self.fleet = FleetView(stale_after_s=15.0)
        self.registry: Registry | None = None
        self.http: RepositoryHttpServer | None = None
        self._sub: Subscription | None = None
        self._jobs: list[PeriodicJob] = []
        self._findings_due = 0.0
        self._interval = 1.0
        self._ctx: RunContext | None = None
        self._findings_gauge: Gauge | None = None
        self._overdue_gauge: Gauge | None = None
        self._rollouts_gauge: Gauge | None = None

    async def start(self, ctx: RunContext) -> None:
        self._ctx = ctx
        self.fleet.stale_after_s = ctx.settings.heartbeat_seconds * STALE_AFTER_BEATS
        self._interval = min(1.0, ctx.settings.heartbeat_seconds)
        folder = self.settings.folder or ctx.settings.data_dir / REGISTRY_FOLDER
        repo = await asyncio.to_thread(open_repository, folder, self.settings)
        self.http = RepositoryHttpServer(repo.folder, self.settings.http_host, self.settings.http_port).start()
        address = ctx.settings.storage_addr
        archive: storage_pb2_grpc.StorageArchiveServiceAsyncStub | None = None
        if address:
            archive = storage_pb2_grpc.StorageArchiveServiceStub(ctx.channel_to(address, "storage"))
        self.registry = Registry(
            bus=ctx.bus,
            repo=repo,
            keys=KeyStore(folder / "keys"),
            settings=self.settings,
            fleet=self.fleet,
            schema_census=storage_schema_census(archive),
        )
        await self.registry.start()
        self._sub = await ctx.bus.nc.subscribe(HEARTBEATS_FILTER, cb=self._on_heartbeat)
        self.fleet.heard_since = time.monotonic()
        fleet_pb2_grpc.add_FleetServiceServicer_to_server(self, ctx.server)
        patch_pb2_grpc.add_PatchServiceServicer_to_server(PatchApi(self.registry, ctx.tokens, self.http), ctx.server)
        ctx.add_service_name(fleet_pb2.DESCRIPTOR.services_by_name["FleetService"].full_name)
        ctx.add_service_name(patch_pb2.DESCRIPTOR.services_by_name["PatchService"].full_name)
        # Woken every interval by a timer, as a scheduler would; each pass is idempotent (a failed
        # one is retried at the next interval). Cut short at a stop: the next start resumes.
        self._jobs = [every(self._interval, self._maintain, name="patch-registry-maintain", grace=0.0)]
        for job in self._jobs:
            job.start()

    async def stop(self) -> None:
        for job in self._jobs:
            await job.stop()
        if self._sub is not None:
            await self._sub.unsubscribe()
        if self.http is not None:
            self.http.stop()

    async def _maintain(self) -> None:
        """Keeps the timestamp fresh, moves roll-outs on and raises overdue findings."""
        assert self.registry is not None
        registry = self.registry
        loop = asyncio.get_running_loop()
        remaining = registry.repo.timestamp_expires() - datetime.now(UTC)
        if remaining < timedelta(minutes=self.settings.timestamp_lifetime_minutes / 2):
            await asyncio.to_thread(registry.repo.refresh_timestamp)
        await registry.drive()
        if loop.time() >= self._findings_due:  # matching the whole fleet is the costly part
            await registry.reconcile_findings()
            await registry.announce_overdue()
            self._findings_due = loop.time() + FINDINGS_INTERVAL_S
        self._measure(registry)

    def _measure(self, registry: Registry) -> None:
        """The figures /metrics shows, set here in the service's own loop (a scrape runs in the
        metrics server's thread, which must not read the registry while it changes)."""
        if self._ctx is None:
            return
        if self._findings_gauge is None:
            metrics = self._ctx.metrics
            self._findings_gauge = metrics.gauge("parley_findings", "Open findings, per priority", ("priority",))
            self._overdue_gauge = metrics.gauge(
                "parley_findings_overdue", "Findings past their deadline", ("priority",)
            )
            self._rollouts_gauge = metrics.gauge("parley_rollouts", "Roll-outs, per state", ("state",))
        now = datetime.now(UTC)
        # Every priority and state is set, 0 included: a dashboard shows 0, not "no data", and no
        # clear() leaves a scrape in between with nothing.
        for gauge, counted, known in (
            (self._findings_gauge, Counter(f.score.priority for f in registry.findings.findings()), PRIORITIES),
            (self._overdue_gauge, Counter(f.score.priority for f in registry.findings.overdue(now)), PRIORITIES),
            (self._rollouts_gauge, Counter(r.state for r in registry.rollouts.values()), STATES),
        ):
            if gauge is None:
                continue
            for label in dict.fromkeys((*known, *counted)):
                gauge.labels(label).set(counted.get(label, 0))

    async def _on_heartbeat(self, msg: Msg) -> None:
        beat = fleet_pb2.InstanceHeartbeat()
        beat.ParseFromString(msg.data)
        self.fleet.record(beat, time.monotonic())

    async def ListInstances(
        self, request: fleet_pb2.ListInstancesRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> fleet_pb2.ListInstancesResponse:
        return fleet_pb2.ListInstancesResponse(instances=self.fleet.instances(time.monotonic()))

    async def GetServiceHealth(
        self, request: fleet_pb2.GetServiceHealthRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> fleet_pb2.GetServiceHealthResponse:
        window_s = request.window_seconds or DEFAULT_HEALTH_WINDOW_S
        points = request.points or DEFAULT_HEALTH_POINTS
        if not MIN_HEALTH_WINDOW_S <= window_s <= MAX_HEALTH_WINDOW_S:
            raise InvalidArgument(
                f"window_seconds must be {MIN_HEALTH_WINDOW_S}..{MAX_HEALTH_WINDOW_S} (0: {DEFAULT_HEALTH_WINDOW_S})"
            )
        if not 2 <= points <= MAX_HEALTH_POINTS:
            raise InvalidArgument(f"points must be 2..{MAX_HEALTH_POINTS} (0: {DEFAULT_HEALTH_POINTS})")
        now_monotonic, now_wall = time.monotonic(), time.time()
        at = {"now_monotonic": now_monotonic, "now_wall": now_wall}
        series = service_health(self.fleet, window_s=window_s, points=points, **at)
        platform = platform_health(self.fleet, window_s=window_s, points=points, **at)
        return fleet_pb2.GetServiceHealthResponse(
            services=[
                fleet_pb2.ServiceHealth(
                    service=service,
                    points=[
                        fleet_pb2.HealthPoint(
                            at=step.at,
                            calls=step.figures.calls,
                            errors=step.figures.errors,
                            error_rate=step.figures.error_rate,
                            p99_ms=step.figures.p99_ms if step.figures.calls else 0.0,
                        )
                        for step in steps
                    ],
                )
                for service, steps in sorted(series.items())
            ],
            step_seconds=window_s / points,
            platform=[
                fleet_pb2.PlatformSeries(
                    figure=line.figure.figure,
                    label=line.label,
                    unit=line.figure.unit,
                    points=[
                        fleet_pb2.PlatformPoint(at=p.at, known=p.value is not None, value=p.value or 0.0)
                        for p in line.steps
                    ],
                )
                for line in platform
            ],
        )
