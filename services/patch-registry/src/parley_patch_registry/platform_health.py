"""The platform's own figures over the last while, for the console's Health page: archive lag
per stream, messages posted per second, live streams open at the gateways and failed logins per
minute, in the same equal steps as each service's health (health.py).

They come from the figures the instances' heartbeats carry (InstanceHeartbeat.figures: the
Prometheus series a service marks `heartbeat=True`), so the registry answers an hour of history
from the heartbeats it keeps anyway, with no Prometheus server in between. A counter's step is
its increase between the heartbeats around the step, per second or minute; a gauge's is its
value in the step's last heartbeat. Instances are summed, except archive lag, where every
storage instance measures the same streams and the worst reading counts.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from parley.fleet.v1 import fleet_pb2

from parley_patch_registry.fleet_view import FleetView

Beat = fleet_pb2.InstanceHeartbeat


@dataclass(frozen=True)
class PlatformFigure:
    """One chart of the Health page, and the heartbeat series it is computed from."""

    figure: str
    series: str  # the sample's name in the heartbeat (and /metrics)
    unit: str
    per_seconds: float | None  # a counter: its increase per this many seconds; None: a gauge
    combined: Callable[[Iterable[float]], float] = sum  # the instances' figures together
    matching: Mapping[str, str] = field(default_factory=dict)  # only samples with these labels
    split_by: str = ""  # a label whose values are separate series (archive lag's stream)


PLATFORM_FIGURES = (
    PlatformFigure("archive_lag_seconds", "parley_archive_lag_seconds", "s", None, combined=max, split_by="stream"),
    PlatformFigure("messages_per_second", "parley_messages_posted_total", "messages/s", 1.0),
    PlatformFigure("live_streams", "parley_live_streams", "streams", None),
    PlatformFigure(
        "login_failures_per_minute",
        "parley_security_records_total",
        "failures/min",
        60.0,
        matching={"kind": "login_failed"},
    ),
)


@dataclass(frozen=True)
class PlatformStep:
    at: float  # the step's end, Unix time
    value: float | None  # None: no kept heartbeat tells


@dataclass(frozen=True)
class PlatformSeries:
    figure: PlatformFigure
    label: str  # the split label's value; empty for a single series
    steps: list[PlatformStep]


def platform_health(
    fleet: FleetView, *, window_s: float, points: int, now_monotonic: float, now_wall: float
) -> list[PlatformSeries]:
    """Each figure of PLATFORM_FIGURES (per label value where split) in `points` steps covering
    the last `window_s` seconds, oldest first. A figure no instance carries has no series."""
    step = window_s / points
    # Per series, per instance: (arrived, reading) of each kept heartbeat that carries it.
    readings: dict[tuple[int, str], list[list[tuple[float, float]]]] = {}
    for ids in fleet.services().values():
        for instance_id in ids:
            mine: dict[tuple[int, str], list[tuple[float, float]]] = {}
            for beat, seen in fleet.history(instance_id):
                for key, value in _readings(beat).items():
                    mine.setdefault(key, []).append((seen, value))
            for key, series in mine.items():
                readings.setdefault(key, []).append(series)
    found: list[PlatformSeries] = []
    for (index, label), instances in sorted(readings.items()):
        figure = PLATFORM_FIGURES[index]
        steps = []
        for n in range(points):
            end = now_monotonic - window_s + (n + 1) * step
            figured = _step_value(figure, instances, end - step, end, stale_after_s=fleet.stale_after_s)
            steps.append(PlatformStep(at=now_wall - (now_monotonic - end), value=figured))
        found.append(PlatformSeries(figure, label, steps))
    return found


def _readings(beat: Beat) -> dict[tuple[int, str], float]:
    """What one heartbeat says of each figure (by its index in PLATFORM_FIGURES) and label."""
    said: dict[tuple[int, str], float] = {}
    for sample in beat.figures:
        for index, figure in enumerate(PLATFORM_FIGURES):
            if sample.name != figure.series or any(sample.labels.get(k) != v for k, v in figure.matching.items()):
                continue
            key = (index, sample.labels.get(figure.split_by, "") if figure.split_by else "")
            said[key] = said.get(key, 0.0) + sample.value
    return said


def _step_value(
    figure: PlatformFigure,
    instances: Sequence[list[tuple[float, float]]],
    start: float,
    end: float,
    *,
    stale_after_s: float,
) -> float | None:
    figures = []
    for readings in instances:
        upto = bisect_right(readings, end, key=lambda r: r[0])  # readings arrived by the step's end
        if upto == 0:
            continue
        last_seen, last = readings[upto - 1]
        if figure.per_seconds is None:
            # A gauge: its value in the step's last heartbeat, or a recent one before it (a step
            # shorter than the heartbeat interval); an instance silent since is not counted.
            if last_seen > start or end - last_seen <= stale_after_s:
                figures.append(last)
            continue
        if last_seen <= start:
            continue  # no heartbeat in the step: silent, or gone
        before = bisect_right(readings, start, key=lambda r: r[0])
        # Counted from the heartbeat before the step, else from the first in it (one that started,
        # or that the registry first heard, during the step): never a counter's whole past at once.
        if not before and upto == 1:
            continue  # its one heartbeat so far: nothing to count from
        base = readings[before - 1][1] if before else readings[0][1]
        # A counter that went down is an instance restarted with the same id: its count since then.
        increase = last - base if last >= base else last
        figures.append(increase * figure.per_seconds / (end - start))
    return figure.combined(figures) if figures else None
