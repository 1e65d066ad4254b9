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
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from failover import PASSWORD, FailoverSender, all_bodies
from workload import publish_figures

from parley_client import ParleyClient
from parley_core.net import free_port
from parley_testing.platform import JoinedHost, RunningPlatform
from parley_testing.waiting import eventually, until

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
    senders = []
    for n in range(senders_per_host * 2):
        on_b = n % 2 == 1
        addresses = [host_b.gateway_address, first.gateway_address] if on_b else [first.gateway_address]
        sender = FailoverSender(f"sender{n}", addresses, ca)
        registering = ParleyClient.connect(first.gateway_address, ca_cert=ca)
        await registering.register(sender.name, PASSWORD)
        await registering.close()
        await sender.connect()
        assert sender.client is not None
        await sender.client.join_channel(channel.channel_id)
        senders.append(sender)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(s.run(channel.channel_id, stop)) for s in senders]

    def acknowledged() -> int:
        return sum(len(s.acknowledged) for s in senders)

    try:
        await until(lambda: acknowledged() >= 50, "sends through both hosts", timeout=60)
        killed_at = time.monotonic()
        pids = await asyncio.to_thread(host_b.kill_9)
        before_kill = acknowledged()
        await until(lambda: acknowledged() >= before_kill + acks_after, "sends after host-b is lost", timeout=300)
        resumed_s = time.monotonic() - killed_at
    finally:
        stop.set()
        await asyncio.gather(*tasks)

    acked = [body for s in senders for body in s.acknowledged]
    history: list[str] = []

    async def archived_all() -> bool | None:
        nonlocal history
        history = await all_bodies(owner, channel.channel_id)
        return True if set(acked) <= set(history) else None

    await eventually(archived_all, "every acknowledged send in history", 120)
    duplicated = [body for body, count in Counter(history).items() if count > 1]
    refusals = [r for s in senders for r in s.refusals]
    figures: dict[str, object] = {
        "acknowledged": len(acked),
        "acknowledged_before_kill": before_kill,
        "in_history": len(history),
        "lost": len(set(acked) - set(history)),
        "duplicated": len(duplicated),
        "refused_calls": sum(s.refused for s in senders),
        "refused_on_the_surviving_host": sum(s.refused for s in senders if len(s.addresses) == 1),
        "refusals": refusals[:10],
        "moved_to_other_gateway": sum(s.moves for s in senders),
        "killed_pids": len(pids),
        "seconds_to_acks_after_kill": round(resumed_s, 1),
    }
    publish_figures(scenario, figures)
    assert figures["lost"] == 0
    assert duplicated == []
    # Only the lost host's calls may fail; no call fails inside the platform (two messaging
    # instances appending to one channel on a JetStream cluster is a retried conflict, not an error).
    assert not [r for r in refusals if "INTERNAL" in r], figures
    assert figures["refused_on_the_surviving_host"] == 0
    assert all(s.moves >= 1 for s in senders if len(s.addresses) == 2), "a sender on host-b never moved"
    for s in senders:
        if s.client is not None:
            await s.client.close()
    await owner.close()


async def test_a_host_lost_under_load_loses_nothing_acknowledged(fleet: tuple[RunningPlatform, JoinedHost]) -> None:
    await lose_a_host_under_load(fleet, senders_per_host=1, acks_after=100, scenario="host-lost-short")


@pytest.mark.slow
@pytest.mark.timeout(1200)
async def test_a_host_lost_under_heavy_load_loses_nothing_acknowledged(
    fleet: tuple[RunningPlatform, JoinedHost],
) -> None:
    await lose_a_host_under_load(fleet, senders_per_host=4, acks_after=3000, scenario="host-lost")
