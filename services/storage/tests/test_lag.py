"""Archive lag against a real nats-server: events and seconds behind, from JetStream's own count."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from parley.messaging.v1.events_pb2 import MessagePosted

from parley_core.bus import EventBus, ReceivedEvent
from parley_core.envelope import NewEvent
from parley_core.topology import CONSUMERS, PLATFORM_USER, STREAMS, channel_subject
from parley_storage.archive import SqlEventArchive, open_engine
from parley_storage.datakeys import DataKeys
from parley_storage.kek import FileKeyring
from parley_storage.lag import StreamLag, measure_lag
from parley_storage.lag_metrics import EVENTS_BEHIND, SECONDS_BEHIND, ArchiveLagGauges
from parley_storage.migrate import upgrade_to_head
from parley_testing.nats import NatsTestServer
from parley_testing.waiting import eventually

TIMEOUT_S = 60.0
MSG_SPEC = next(c for c in CONSUMERS if c.stream == "MSG")


@dataclass
class Rig:
    """An archive and the two buses around it: messaging posts, storage measures and archives."""

    archive: SqlEventArchive
    messaging: EventBus
    storage: EventBus
    posted: int = 0

    async def post(self, n: int) -> None:
        for _ in range(n):
            self.posted += 1
            event = NewEvent(
                aggregate_type="channel",
                aggregate_id="lagging",
                payload=MessagePosted(channel_id="lagging", sender_id="u1", channel_seq=self.posted, body="b"),
                actor="u1",
            )
            await self.messaging.append(
                channel_subject("lagging"), event, aggregate_version=self.posted, expected_last_subject_seq=None
            )

    async def archive_batch(self, batch: Sequence[ReceivedEvent]) -> None:
        await self.archive.archive(MSG_SPEC.durable, batch)


@pytest.fixture
async def rig(nats_server: NatsTestServer, tmp_path: Path) -> AsyncIterator[Rig]:
    engine = open_engine(f"sqlite:///{tmp_path / 'archive.db'}")
    upgrade_to_head(engine)
    archive = SqlEventArchive(engine, DataKeys(FileKeyring.load_or_create(tmp_path / "kek.json")))
    platform = EventBus(await nats_server.connect(PLATFORM_USER), service=PLATFORM_USER, producer="test")
    await platform.ensure_streams(STREAMS)
    messaging = EventBus(await nats_server.connect("messaging"), service="messaging", producer="messaging@test")
    storage = EventBus(await nats_server.connect("storage"), service="storage", producer="storage@test")
    try:
        yield Rig(archive, messaging, storage)
    finally:
        await storage.stop_consumers()
        engine.dispose()


async def test_lag_counts_what_is_not_archived_yet(rig: Rig) -> None:
    archive, storage = rig.archive, rig.storage

    async def msg_lag() -> StreamLag:
        return next(lag for lag in await measure_lag(storage.js, archive) if lag.stream == "MSG")

    await rig.post(5)
    before = await msg_lag()
    # No consumer yet: all five are behind, and the oldest has been waiting for some time.
    assert (before.stream_last_seq, before.events_behind, before.acked_seq) == (5, 5, 0)
    assert before.seconds_behind > 0

    await storage.consume(MSG_SPEC, rig.archive_batch)

    async def caught_up() -> bool | None:
        lag = await msg_lag()
        return True if lag.events_behind == 0 and lag.acked_seq == 5 else None

    await eventually(caught_up, "the consumer to archive five events", TIMEOUT_S)
    done = await msg_lag()
    assert (done.seconds_behind, done.committed_seq) == (0.0, 5)
    assert await archive.count_events("MSG") == 5

    await storage.stop_consumers()
    await rig.post(3)
    behind = await msg_lag()
    assert (behind.stream_last_seq, behind.acked_seq, behind.events_behind) == (8, 5, 3)
    assert behind.seconds_behind > 0
    other = [lag for lag in await measure_lag(storage.js, archive) if lag.stream != "MSG"]
    assert {lag.stream for lag in other} == {c.stream for c in CONSUMERS} - {"MSG"}
    assert all(lag.events_behind == 0 for lag in other)


def gauge_values(reader: InMemoryMetricReader, name: str) -> dict[str, float]:
    """The gauge's value per stream, as an OpenTelemetry exporter would receive it."""
    data = reader.get_metrics_data()
    assert data is not None
    return {
        str(point.attributes["stream"]): point.value  # type: ignore[index, union-attr]
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    }


async def test_lag_is_exported_as_opentelemetry_gauges(rig: Rig) -> None:
    reader = InMemoryMetricReader()
    gauges = ArchiveLagGauges(MeterProvider(metric_readers=[reader]).get_meter("test"))
    await rig.post(4)
    gauges.update(await measure_lag(rig.storage.js, rig.archive))
    assert gauge_values(reader, EVENTS_BEHIND)["MSG"] == 4
    assert gauge_values(reader, SECONDS_BEHIND)["MSG"] > 0
    assert set(gauge_values(reader, EVENTS_BEHIND)) == {c.stream for c in CONSUMERS if c.service == "storage"}

    await rig.storage.consume(MSG_SPEC, rig.archive_batch)

    async def caught_up() -> bool | None:
        gauges.update(await measure_lag(rig.storage.js, rig.archive))
        return True if gauge_values(reader, EVENTS_BEHIND)["MSG"] == 0 else None

    await eventually(caught_up, "the gauge to read zero events behind", TIMEOUT_S)
    assert gauge_values(reader, SECONDS_BEHIND)["MSG"] == 0.0
