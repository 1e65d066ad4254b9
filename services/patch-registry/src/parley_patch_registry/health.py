"""Each service's health over the last while, for the console's Health charts: in equal steps,
the calls, server faults and p99 latency every instance of the service served, from the same
heartbeat counters and latency histograms the roll-out health gates judge (FleetView.window).

Only what the registry still holds: instances in the fleet view (one stopped on purpose leaves it,
and its history with it), and per instance the last HEARTBEAT_HISTORY beats.
"""

from __future__ import annotations

from dataclasses import dataclass

from parley_patch_registry.fleet_view import FleetView
from parley_patch_registry.gate import CallFigures


@dataclass(frozen=True)
class HealthStep:
    at: float  # the step's end, Unix time
    figures: CallFigures


def service_health(
    fleet: FleetView, *, window_s: float, points: int, now_monotonic: float, now_wall: float
) -> dict[str, list[HealthStep]]:
    """Per service, `points` steps covering the last `window_s` seconds, oldest first."""
    step = window_s / points
    series: dict[str, list[HealthStep]] = {}
    for service, instance_ids in fleet.services().items():
        steps = []
        for index in range(points):
            end = now_monotonic - window_s + (index + 1) * step
            figures = fleet.window(instance_ids, end - step, end)
            steps.append(HealthStep(at=now_wall - (now_monotonic - end), figures=figures))
        series[service] = steps
    return series
