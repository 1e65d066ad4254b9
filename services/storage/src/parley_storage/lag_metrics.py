"""Archive lag as OpenTelemetry observable gauges, beside the GetArchiveLag call.

Observable-gauge callbacks run synchronously inside the SDK's collection, where JetStream cannot
be asked; so a refresh task measures (lag.measure_lag) at an interval and the callbacks report
the newest measurement. Both gauges carry the stream and consumer as attributes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from parley_storage.lag import StreamLag

EVENTS_BEHIND = "parley.storage.archive.lag.events"
SECONDS_BEHIND = "parley.storage.archive.lag.seconds"


class ArchiveLagGauges:
    def __init__(self, meter: Meter) -> None:
        self._latest: tuple[StreamLag, ...] = ()
        meter.create_observable_gauge(
            EVENTS_BEHIND,
            callbacks=[self._events],
            unit="{event}",
            description="events in JetStream not yet archived (pending + unacknowledged), per stream",
        )
        meter.create_observable_gauge(
            SECONDS_BEHIND,
            callbacks=[self._seconds],
            unit="s",
            description="age of the oldest event not yet archived, per stream; 0 when caught up",
        )

    def update(self, lags: Sequence[StreamLag]) -> None:
        self._latest = tuple(lags)

    def _events(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(lag.events_behind, _attributes(lag)) for lag in self._latest]

    def _seconds(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(lag.seconds_behind, _attributes(lag)) for lag in self._latest]


def _attributes(lag: StreamLag) -> dict[str, str]:
    return {"stream": lag.stream, "consumer": lag.consumer}
