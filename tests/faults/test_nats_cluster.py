"""A three-node JetStream cluster with replicas 3 loses its stream leader while events are appended.

Appends go through Parley's own EventBus (Nats-Msg-Id deduplication), connected to all three
nodes as services are when PARLEY_NATS_URL lists a cluster. The writer retries a failed append
with the same event id, as the services do; afterwards every acknowledged event must be in the
stream exactly once, on the surviving nodes and on the killed node once it is back.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from pathlib import Path

import nats.errors
import nats.js.errors
import pytest
from nats.js.api import StreamInfo
from parley.messaging.v1.events_pb2 import MessagePosted
from workload import FaultReport, until

from parley_core.bus import AppendNotMade, EventBus, ReceivedEvent
from parley_core.envelope import NewEvent, open_payload
from parley_core.pki import Pki
from parley_core.topology import PLATFORM_USER, STREAMS, channel_subject
from parley_testing.nats import start_nats_cluster
from parley_testing.waiting import eventually

pytestmark = pytest.mark.slow

WRITERS = 6
APPEND_GIVE_UP_S = 60.0
# A JetStream API request the cluster leaves unanswered within the client's timeout, or answers
# "temporarily unavailable", while a node is gone, rejoins or an election runs: asked again.
ELECTING = (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError)


class Writer:
    """Appends MessagePosted events to a few channels until stopped, retrying like a service."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.attempted: set[str] = set()
        self.acknowledged: set[str] = set()
        self.retries = 0
        self.refused = 0
        self._stop = asyncio.Event()

    async def run(self, lane: int) -> None:
        channel_id = f"cluster-{lane}"
        n = 0
        while not self._stop.is_set():
            event_id = uuid.uuid4().hex
            event = NewEvent(
                aggregate_type="channel",
                aggregate_id=channel_id,
                payload=MessagePosted(channel_id=channel_id, message_id=event_id, body=f"lane {lane} #{n}"),
                actor="cluster-test",
                event_id=event_id,
            )
            self.attempted.add(event_id)
            deadline = time.monotonic() + APPEND_GIVE_UP_S
            delay = 0.05
            while True:
                try:
                    await self.bus.append(
                        channel_subject(channel_id), event, aggregate_version=n + 1, expected_last_subject_seq=None
                    )
                    self.acknowledged.add(event_id)
                    break
                except (nats.errors.Error, TimeoutError, AppendNotMade):  # unknown outcomes are TimeoutErrors
                    if time.monotonic() > deadline:
                        self.refused += 1
                        break
                    self.retries += 1
                    await asyncio.sleep(delay)  # retry backoff while the cluster elects a leader
                    delay = min(delay * 2, 1.0)
            n += 1

    def stop(self) -> None:
        self._stop.set()


async def msg_info(bus: EventBus) -> StreamInfo:
    """MSG as the cluster describes it, once it answers (ELECTING)."""
    return await eventually(lambda: bus.js.stream_info("MSG"), "the cluster to describe MSG", 60, passing=ELECTING)


async def stream_contents(bus: EventBus) -> list[str]:
    """Every event id in MSG, in stream order, read with Parley's own replay."""
    info = await msg_info(bus)
    seen: list[str] = []

    async def collect(event: ReceivedEvent) -> None:
        payload = open_payload(event.envelope)
        assert isinstance(payload, MessagePosted)
        seen.append(payload.message_id)

    replay = await bus.replay(stream="MSG", filter_subject="parley.msg.>", handler=collect)
    await replay.wait_for_seq(info.state.last_seq, timeout=60)
    await replay.stop()
    return seen


async def test_cluster_loses_its_stream_leader_while_appending(pki: Pki, tmp_path: Path) -> None:
    cluster = await start_nats_cluster(pki, tmp_path / "cluster")
    try:
        nc = await cluster.connect(PLATFORM_USER)
        bus = EventBus(nc, service=PLATFORM_USER, producer="cluster-test")
        await bus.ensure_streams_when_ready(STREAMS, replicas=3)
        info = await msg_info(bus)
        assert info.config.num_replicas == 3
        writer = Writer(bus)
        tasks = [asyncio.create_task(writer.run(lane)) for lane in range(WRITERS)]
        await until(lambda: len(writer.acknowledged) >= 200, timeout=120, what="200 acknowledged appends")

        leader = (await msg_info(bus)).cluster.leader  # type: ignore[union-attr]
        assert leader is not None
        killed = cluster.node_named(leader)
        killed.kill()
        before = len(writer.acknowledged)
        await until(
            lambda: len(writer.acknowledged) >= before + 200,
            timeout=180,
            what="200 more appends acknowledged with the old leader dead",
        )
        new_leader = (await msg_info(bus)).cluster.leader  # type: ignore[union-attr]
        writer.stop()
        await asyncio.gather(*tasks)

        stored = await stream_contents(bus)
        counts = Counter(stored)
        lost = writer.acknowledged - set(counts)
        duplicated = [event_id for event_id, count in counts.items() if count > 1]
        FaultReport(
            scenario="nats-cluster-leader-kill9",
            sent=len(writer.attempted),
            acknowledged=len(writer.acknowledged),
            archived=len(stored),
            delivered_live=0,
            delivered_live_expected=0,
            lost=len(lost),
            duplicated=len(duplicated),
            retries=writer.retries,
            refused={"gave_up": writer.refused} if writer.refused else {},
            stream_reconnects=0,
            notes=f"3 nodes, MSG with replicas 3; killed stream leader {leader}, new leader {new_leader};"
            " counts are stream events (archived = events in the stream)",
        ).publish()
        assert new_leader != leader
        assert not lost, f"{len(lost)} acknowledged appends are not in the stream"
        assert not duplicated, f"{len(duplicated)} events stored twice"
        assert writer.refused == 0

        # The killed node comes back, catches up, and can lead: nothing was lost on it either.
        await cluster.restart(killed)
        await until_caught_up(bus, leader, len(stored))
    finally:
        await cluster.stop()


async def until_caught_up(bus: EventBus, node: str, messages: int, timeout: float = 120.0) -> None:
    """Wait until the restarted node reports itself a current replica of MSG."""

    async def current() -> bool | None:
        info = await bus.js.stream_info("MSG")
        replicas = {r.name: r for r in (info.cluster.replicas or [])} if info.cluster else {}
        caught_up = info.state.messages == messages and (
            info.cluster.leader == node or (node in replicas and replicas[node].current)  # type: ignore[union-attr]
        )
        return True if caught_up else None

    # Polling the cluster's view of the replica.
    await eventually(
        current, f"{node} to catch up with MSG as a current replica", timeout, interval=0.2, passing=ELECTING
    )
