"""The gate's evidence from heartbeats: any window's calls, errors and percentiles, by difference."""

from __future__ import annotations

from parley.fleet.v1 import fleet_pb2

from parley_core.request_stats import LATENCY_BUCKETS_MS, RequestStats, bucket_percentile
from parley_patch_registry.fleet_view import FleetView


def beat(instance: str, stats: RequestStats, *, version: str = "0.1.0") -> fleet_pb2.InstanceHeartbeat:
    return fleet_pb2.InstanceHeartbeat(
        service="messaging",
        version=version,
        instance_id=instance,
        health="SERVING",
        requests_total=stats.requests,
        errors_total=stats.errors,
        p99_latency_ms=stats.take_p99_ms(),
        latency_buckets=stats.latency_buckets,
    )


def test_percentiles_are_bucket_upper_bounds_never_below_the_measured_latency() -> None:
    stats = RequestStats()
    for _ in range(98):
        stats.record(4.0, fault=False)
    stats.record(3004.0, fault=False)
    stats.record(3004.0, fault=False)
    assert bucket_percentile(stats.latency_buckets, 0.5) == 5.0
    assert bucket_percentile(stats.latency_buckets, 0.99) == 4000.0
    assert bucket_percentile([0] * (len(LATENCY_BUCKETS_MS) + 1), 0.99) == 0.0


def test_a_window_counts_only_the_calls_after_its_start() -> None:
    fleet = FleetView(stale_after_s=3.0)
    stable = RequestStats()
    for _ in range(1000):  # slow calls before the window opened: not part of it
        stable.record(2500.0, fault=True)
    fleet.record(beat("old-1", stable), received_at=10.0)
    for _ in range(50):
        stable.record(8.0, fault=False)
    fleet.record(beat("old-1", stable), received_at=12.0)
    figures = fleet.figures(["old-1"], since=10.0)
    assert (figures.calls, figures.errors, figures.p50_ms, figures.p99_ms) == (50, 0, 10.0, 10.0)
    # Since start: everything the instance ever counted.
    assert fleet.figures(["old-1"], since=None).calls == 1050


def test_a_version_without_histograms_is_judged_on_its_worst_heartbeat_p99() -> None:
    fleet = FleetView(stale_after_s=3.0)
    for at, p99, calls in ((1.0, 20.0, 10), (2.0, 900.0, 20), (3.0, 30.0, 30)):
        fleet.record(
            fleet_pb2.InstanceHeartbeat(
                service="messaging", instance_id="new-1", health="SERVING", requests_total=calls, p99_latency_ms=p99
            ),
            received_at=at,
        )
    figures = fleet.figures(["new-1"], since=None)
    assert (figures.calls, figures.p99_ms) == (30, 900.0)
