"""Each service's health in steps over the last while (GetServiceHealth, the console's Health
charts): the same heartbeat differences as the gates, step by step, instances summed."""

from __future__ import annotations

from parley.fleet.v1 import fleet_pb2

from parley_core.request_stats import RequestStats
from parley_patch_registry.fleet_view import FleetView
from parley_patch_registry.health import service_health


def beat(service: str, instance: str, stats: RequestStats) -> fleet_pb2.InstanceHeartbeat:
    return fleet_pb2.InstanceHeartbeat(
        service=service,
        instance_id=instance,
        health="SERVING",
        requests_total=stats.requests,
        errors_total=stats.errors,
        latency_buckets=stats.latency_buckets,
    )


def calls(stats: RequestStats, count: int, *, latency_ms: float, faults: int = 0) -> None:
    for index in range(count):
        stats.record(latency_ms, fault=index < faults)


def test_each_step_counts_its_own_calls_summed_over_a_services_instances() -> None:
    fleet = FleetView(stale_after_s=3.0)
    one, two, auth = RequestStats(), RequestStats(), RequestStats()
    # Monotonic seconds 100..110: two messaging instances and auth, a beat every 5 s.
    fleet.record(beat("messaging", "m-1", one), received_at=100.0)
    fleet.record(beat("messaging", "m-2", two), received_at=100.0)
    fleet.record(beat("auth", "a-1", auth), received_at=100.0)
    calls(one, 300, latency_ms=4.0)  # step 1: fast and clean
    calls(two, 100, latency_ms=4.0)
    fleet.record(beat("messaging", "m-1", one), received_at=105.0)
    fleet.record(beat("messaging", "m-2", two), received_at=105.0)
    calls(one, 200, latency_ms=900.0, faults=50)  # step 2: slow, a quarter failing
    fleet.record(beat("messaging", "m-1", one), received_at=110.0)
    fleet.record(beat("messaging", "m-2", two), received_at=110.0)
    fleet.record(beat("auth", "a-1", auth), received_at=110.0)

    series = service_health(fleet, window_s=10.0, points=2, now_monotonic=110.0, now_wall=1_000_010.0)
    assert sorted(series) == ["auth", "messaging"]
    first, second = series["messaging"]
    assert (first.at, second.at) == (1_000_005.0, 1_000_010.0)
    assert (first.figures.calls, first.figures.errors) == (400, 0)
    assert first.figures.p99_ms == 5.0  # the 4 ms calls' bucket
    assert (second.figures.calls, second.figures.errors, second.figures.error_rate) == (200, 50, 0.25)
    assert second.figures.p99_ms == 1000.0  # the 900 ms calls' bucket
    assert [s.figures.calls for s in series["auth"]] == [0, 0]


def test_a_step_from_before_the_kept_heartbeats_is_left_out_rather_than_counted_whole() -> None:
    fleet = FleetView(stale_after_s=3.0, history=2)
    stats = RequestStats()
    for at in (100.0, 105.0, 110.0):  # the first beat is dropped from the kept history
        calls(stats, 100, latency_ms=4.0)
        fleet.record(beat("messaging", "m-1", stats), received_at=at)
    early, late = service_health(fleet, window_s=10.0, points=2, now_monotonic=110.0, now_wall=0.0)["messaging"]
    assert early.figures.calls == 0  # unknown: not the 200 calls counted since start
    assert late.figures.calls == 100
