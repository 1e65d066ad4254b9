"""A host lost under load: kill -9 of every process of one host while clients send through both hosts.

Two hosts on loopback: the first runs `parley up --nats-cluster 3` (every service, the JetStream
cluster), host-b joins with messaging and a gateway (`parley host join`). Senders on each host's
gateway send one message after another, each with an idempotency key. Then host-b's agent and
every instance it runs are SIGKILLed at once: the senders that were on host-b move to the first
host's gateway and send their message in flight again under the same key. Every acknowledged
message must be in history exactly once, and no message that was not acknowledged may be there
twice. The short run is in `make test`; `make faults` runs the long one and keeps its counts in
fault-results/.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from failover import (
    PASSWORD,
    FailoverSender,
    assert_nothing_lost,
    close_all,
    enrol,
    history_holding,
    loss_figures,
    send_through_a_loss,
)
from workload import publish_figures

from parley_client import ParleyClient
from parley_core.net import free_port
from parley_testing.platform import JoinedHost, RunningPlatform

pytestmark = pytest.mark.e2e


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[RunningPlatform, JoinedHost]]:
    (tmp_path / "first").mkdir()
    first = RunningPlatform(
        data_dir=tmp_path / "first" / "data",
        env={"PARLEY_REGISTRATION": "open", "PARLEY_HEARTBEAT_SECONDS": "1"},
        up_args=("--gateway-port", str(free_port()), "--nats-cluster", "3"),
    )
    first.start()
    try:
        host = JoinedHost.join(first, tmp_path / "host-b", "host-b", "messaging,gateway")
        try:
            yield first, host
        finally:
            host.kill()
    finally:
        first.kill()


async def lose_a_host_under_load(
    fleet: tuple[RunningPlatform, JoinedHost], *, senders_per_host: int, acks_after: int, scenario: str
) -> None:
    first, host_b = fleet
    ca = first.ca_cert.read_bytes()
    owner = ParleyClient.connect(first.gateway_address, ca_cert=ca)
    await owner.register("watcher", PASSWORD)
    await owner.login("watcher", PASSWORD)
    channel = await owner.create_channel("host-lost")
    # Odd senders start on host-b's gateway and move to the first host's; even ones stay there.
    both = [host_b.gateway_address, first.gateway_address]
    senders = [
        FailoverSender(f"sender{n}", both if n % 2 == 1 else [first.gateway_address], ca)
        for n in range(senders_per_host * 2)
    ]
    await enrol(senders, channel.channel_id, first.gateway_address, ca)

    async def lose_host_b() -> list[int]:
        return await asyncio.to_thread(host_b.kill_9)

    loss = await send_through_a_loss(
        senders, channel.channel_id, lose_host_b, acks_after=acks_after, what="host-b is lost"
    )
    history = await history_holding(owner, channel.channel_id, [body for s in senders for body in s.acknowledged])
    figures = loss_figures(senders, history, loss)
    publish_figures(scenario, figures)
    assert_nothing_lost(senders, figures, "host-b")
    await close_all([*(s.client for s in senders), owner])


async def test_a_host_lost_under_load_loses_nothing_acknowledged(fleet: tuple[RunningPlatform, JoinedHost]) -> None:
    await lose_a_host_under_load(fleet, senders_per_host=1, acks_after=100, scenario="host-lost-short")


@pytest.mark.slow
@pytest.mark.timeout(1200)
async def test_a_host_lost_under_heavy_load_loses_nothing_acknowledged(
    fleet: tuple[RunningPlatform, JoinedHost],
) -> None:
    await lose_a_host_under_load(fleet, senders_per_host=4, acks_after=3000, scenario="host-lost")
