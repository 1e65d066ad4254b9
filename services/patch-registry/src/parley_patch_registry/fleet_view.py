"""What the registry knows of the fleet: every instance's recent heartbeats, and the calls they
served over a window (the figures a roll-out's health gate judges, and the console's charts)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from parley.fleet.v1 import fleet_pb2

from parley_core.request_stats import LATENCY_BUCKETS_MS, bucket_percentile
from parley_patch_registry.gate import CallFigures

# Heartbeats kept per instance: at the default one every 5 s, the last hour (the console's Health
# page); at one a second, twelve minutes, longer than any gate window.
HEARTBEAT_HISTORY = 720
STOPPED = "STOPPED"


class FleetView:
    """Every instance's heartbeats of the last while (newest last), with when each arrived."""

    def __init__(self, stale_after_s: float, history: int = HEARTBEAT_HISTORY) -> None:
        self.stale_after_s = stale_after_s
        self._history_len = history
        self.heard_since: float | None = None  # when the registry began to follow heartbeats (monotonic)
        self._beats: dict[str, deque[tuple[fleet_pb2.InstanceHeartbeat, float]]] = {}
        self._first: dict[str, tuple[fleet_pb2.InstanceHeartbeat, float]] = {}

    @property
    def _latest(self) -> dict[str, tuple[fleet_pb2.InstanceHeartbeat, float]]:
        return {instance_id: beats[-1] for instance_id, beats in self._beats.items()}

    def record(self, beat: fleet_pb2.InstanceHeartbeat, received_at: float) -> None:
        """A STOPPED beat is an instance's last word when it stopped on purpose (a drain, a
        platform stop): it leaves the view. One that falls silent stays, and shows as stale."""
        if beat.health == STOPPED:
            self._beats.pop(beat.instance_id, None)
            self._first.pop(beat.instance_id, None)
            return
        self._first.setdefault(beat.instance_id, (beat, received_at))
        self._beats.setdefault(beat.instance_id, deque(maxlen=self._history_len)).append((beat, received_at))

    def complete(self, now: float) -> bool:
        """Every live instance has been heard: the view has followed heartbeats as long as an
        instance stays live without one."""
        return self.heard_since is not None and now - self.heard_since >= self.stale_after_s

    def is_live(self, instance_id: str, now: float) -> bool:
        entry = self.latest(instance_id)
        return entry is not None and now - entry[1] <= self.stale_after_s and entry[0].health == "SERVING"

    def latest(self, instance_id: str) -> tuple[fleet_pb2.InstanceHeartbeat, float] | None:
        beats = self._beats.get(instance_id)
        return beats[-1] if beats else None

    def first(self, instance_id: str) -> tuple[fleet_pb2.InstanceHeartbeat, float] | None:
        return self._first.get(instance_id)

    def history(self, instance_id: str) -> list[tuple[fleet_pb2.InstanceHeartbeat, float]]:
        """The instance's kept heartbeats with when each arrived, oldest first."""
        return list(self._beats.get(instance_id, ()))

    def figures(self, instance_ids: Iterable[str], since: float | None) -> CallFigures:
        """The calls these instances served since `since` (None: since they started), summed.

        Each instance's counters are cumulative, so the window is its newest heartbeat minus the
        last one received at or before `since` (zero when it started later). Latencies come from
        the difference of the latency histograms; an instance of a version without them counts
        its heartbeats' own p99s, the worst of them.
        """
        spans: list[tuple[fleet_pb2.InstanceHeartbeat | None, fleet_pb2.InstanceHeartbeat, list[Beat]]] = []
        for instance_id in instance_ids:
            beats = self._beats.get(instance_id)
            if not beats:
                continue
            base: fleet_pb2.InstanceHeartbeat | None = None
            if since is not None:
                base = next((beat for beat, seen in reversed(beats) if seen <= since), None)
            window = [beat for beat, seen in beats if since is None or seen > since]
            spans.append((base, beats[-1][0], window))
        return _summed(spans)

    def window(self, instance_ids: Iterable[str], start: float, end: float) -> CallFigures:
        """The calls these instances served between `start` and `end` (monotonic seconds), as
        the heartbeats around both tell. An instance whose kept history begins after `start`
        while it ran before (older heartbeats dropped) is left out: its count there is unknown."""
        spans: list[tuple[fleet_pb2.InstanceHeartbeat | None, fleet_pb2.InstanceHeartbeat, list[Beat]]] = []
        for instance_id in instance_ids:
            beats = self._beats.get(instance_id)
            first = self._first.get(instance_id)
            if not beats or first is None:
                continue
            latest = next((beat for beat, seen in reversed(beats) if seen <= end), None)
            if latest is None:
                continue  # not started yet then
            base = next((beat for beat, seen in reversed(beats) if seen <= start), None)
            if base is None and first[1] <= start:
                continue  # its heartbeats from then are no longer kept
            window = [beat for beat, seen in beats if start < seen <= end]
            spans.append((base, latest, window))
        return _summed(spans)

    def services(self) -> dict[str, list[str]]:
        """Every service in the view, with its instances."""
        found: dict[str, list[str]] = {}
        for instance_id, (beat, _) in sorted(self._latest.items()):
            found.setdefault(beat.service, []).append(instance_id)
        return found

    def instances(self, now: float) -> list[fleet_pb2.InstanceStatus]:
        return [
            fleet_pb2.InstanceStatus(last_heartbeat=beat, stale=now - seen > self.stale_after_s)
            for beat, seen in sorted(self._latest.values(), key=lambda x: (x[0].service, x[0].instance_id))
        ]

    def live(self, now: float, service: str | None = None) -> list[fleet_pb2.InstanceHeartbeat]:
        return [
            beat
            for beat, seen in self._latest.values()
            if now - seen <= self.stale_after_s
            and beat.health == "SERVING"
            and (service is None or beat.service == service)
        ]


Beat = fleet_pb2.InstanceHeartbeat


def _summed(
    spans: Iterable[tuple[fleet_pb2.InstanceHeartbeat | None, fleet_pb2.InstanceHeartbeat, list[Beat]]],
) -> CallFigures:
    """Calls, errors and latency percentiles over (base, latest, beats between) of each instance:
    the difference of the cumulative counters and latency histograms."""
    calls = errors = 0
    buckets = [0] * (len(LATENCY_BUCKETS_MS) + 1)
    unbucketed_p99 = 0.0
    for base, latest, window in spans:
        calls += latest.requests_total - (base.requests_total if base else 0)
        errors += latest.errors_total - (base.errors_total if base else 0)
        if len(latest.latency_buckets) == len(buckets):
            before = list(base.latency_buckets) if base and len(base.latency_buckets) == len(buckets) else []
            for index, count in enumerate(latest.latency_buckets):
                buckets[index] += count - (before[index] if before else 0)
        else:
            unbucketed_p99 = max([unbucketed_p99, *(beat.p99_latency_ms for beat in window)])
    # The p99 of fewer than 200 calls would be its slowest call or two: those are left out, so
    # that one hiccup of a loaded host is not read as the version's latency.
    q = min(0.99, 1 - 2 / calls) if calls > 2 else 0.5
    return CallFigures(
        calls=calls,
        errors=errors,
        p50_ms=bucket_percentile(buckets, 0.5),
        p99_ms=max(bucket_percentile(buckets, q), unbucketed_p99),
    )
