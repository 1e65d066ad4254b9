"""Every instance reports what it runs; the patch registry keeps the fleet view."""

from __future__ import annotations

import os
import signal

import pytest
from parley.fleet.v1 import fleet_pb2, fleet_pb2_grpc

from parley_core.topology import SERVICES
from parley_testing.platform import RunningPlatform
from parley_testing.waiting import eventually, wait_until

pytestmark = pytest.mark.e2e


async def test_fleet_view_lists_every_service_with_version_and_packages(platform: RunningPlatform) -> None:
    channel = platform.service_channel("patch-registry")
    stub: fleet_pb2_grpc.FleetServiceAsyncStub = fleet_pb2_grpc.FleetServiceStub(channel)

    async def every_service_reported() -> dict[str, fleet_pb2.InstanceStatus] | None:
        response = await stub.ListInstances(fleet_pb2.ListInstancesRequest(), timeout=5)
        reported = {i.last_heartbeat.service: i for i in response.instances}
        return reported if set(SERVICES) <= reported.keys() else None

    reported = await eventually(every_service_reported, "every service's heartbeat in the fleet view", 30)
    await channel.close()
    for name, instance in reported.items():
        beat = instance.last_heartbeat
        assert beat.version == "0.1.0", name
        assert beat.health == "SERVING"
        assert not instance.stale
        packages = {d.name: d.version for d in beat.distributions}
        assert f"parley-{name}" in packages
        assert "grpcio" in packages


def test_parked_listing_when_nothing_is_parked(platform: RunningPlatform) -> None:
    listing = platform.cli("parked")
    assert listing.returncode == 0
    assert "no parked events" in listing.stdout


def test_several_services_crashing_at_once_are_all_restarted(platform: RunningPlatform) -> None:
    victims = ("auth", "storage", "patch-registry")
    for name in victims:
        pid = platform.service(name)["pid"]
        assert isinstance(pid, int)
        os.kill(pid, signal.SIGKILL)
    for name in victims:
        wait_until(
            lambda name=name: f"{name} is serving again" in platform.output(),  # type: ignore[misc]
            timeout=120,
            what=f"{name} to be restarted",
        )
    assert platform.cli("status").returncode == 0
