"""Fleet inventory from instance heartbeats; releases, advisories and roll-outs build on it."""

from __future__ import annotations

import time

import grpc
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from parley.fleet.v1 import fleet_pb2, fleet_pb2_grpc

from parley_core.runner import RunContext
from parley_core.topology import HEARTBEATS_FILTER

STALE_AFTER_BEATS = 3


class FleetView:
    """The newest heartbeat of every instance, and when it arrived."""

    def __init__(self, stale_after_s: float) -> None:
        self.stale_after_s = stale_after_s
        self._latest: dict[str, tuple[fleet_pb2.InstanceHeartbeat, float]] = {}

    def record(self, beat: fleet_pb2.InstanceHeartbeat, received_at: float) -> None:
        self._latest[beat.instance_id] = (beat, received_at)

    def instances(self, now: float) -> list[fleet_pb2.InstanceStatus]:
        return [
            fleet_pb2.InstanceStatus(last_heartbeat=beat, stale=now - seen > self.stale_after_s)
            for beat, seen in sorted(self._latest.values(), key=lambda x: (x[0].service, x[0].instance_id))
        ]


class PatchRegistryApp(fleet_pb2_grpc.FleetServiceServicer):
    def __init__(self) -> None:
        self.fleet = FleetView(stale_after_s=15.0)
        self._sub: Subscription | None = None

    async def start(self, ctx: RunContext) -> None:
        self.fleet.stale_after_s = ctx.settings.heartbeat_seconds * STALE_AFTER_BEATS
        self._sub = await ctx.bus.nc.subscribe(HEARTBEATS_FILTER, cb=self._on_heartbeat)
        fleet_pb2_grpc.add_FleetServiceServicer_to_server(self, ctx.server)
        ctx.add_service_name(fleet_pb2.DESCRIPTOR.services_by_name["FleetService"].full_name)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def _on_heartbeat(self, msg: Msg) -> None:
        beat = fleet_pb2.InstanceHeartbeat()
        beat.ParseFromString(msg.data)
        self.fleet.record(beat, time.monotonic())

    async def ListInstances(
        self, request: fleet_pb2.ListInstancesRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> fleet_pb2.ListInstancesResponse:
        return fleet_pb2.ListInstancesResponse(instances=self.fleet.instances(time.monotonic()))
