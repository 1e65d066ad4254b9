"""The gateway's NATS password, taken from `secrets/`, floods MSG with consumers on a platform run as
`parley up` runs it: the consumer guard deletes them, reports the flood, quarantines the gateway's
account, and every service still makes its consumers (messaging's replays when it is restarted,
storage's archive consumer after an operator deletes it). `parley quarantine lift` undoes it.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import Iterator

import nats.errors
import pytest
from nats.aio.client import Client

from parley_core import topology
from parley_core.bus import EventBus, ReceivedEvent
from parley_core.consumer_policy import EPHEMERAL_QUOTA
from parley_testing.consumer_flood import flood_consumers
from parley_testing.platform import RunningPlatform, platform_in
from parley_testing.waiting import wait_until

pytestmark = pytest.mark.e2e

WAIT_S = 90.0  # a service restart on a loaded host included


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlatform]:
    running = platform_in(tmp_path_factory.mktemp("guard"))
    yield from running.served()


async def _connect(platform: RunningPlatform, user: str) -> Client:
    return await platform.nats(user)


async def _consumer_names(platform: RunningPlatform) -> dict[str, list[str]]:
    nc = await _connect(platform, topology.PLATFORM_USER)
    try:
        js = nc.jetstream()
        return {s.name: [c.name for c in await js.consumers_info(s.name)] for s in topology.STREAMS}
    finally:
        await nc.close()


async def _flood(platform: RunningPlatform) -> int:
    nc = await _connect(platform, "gateway")
    try:
        return (await flood_consumers(nc, "gateway", "MSG")).made
    finally:
        await nc.close()


async def _delete_archive_consumer(platform: RunningPlatform) -> None:
    nc = await _connect(platform, topology.PLATFORM_USER)
    try:
        await nc.jetstream().delete_consumer("MSG", "storage-archive-msg")
    finally:
        await nc.close()


async def _gateway_makes_a_replay(platform: RunningPlatform) -> None:
    async def ignore(_event: ReceivedEvent) -> None:
        return None

    nc = await _connect(platform, "gateway")
    try:
        bus = EventBus(nc, service="gateway", producer="test@0")
        replay = await bus.replay(stream="AUTH", filter_subject=topology.SIGNING_KEYS_FILTER, handler=ignore)
        await replay.stop()
    finally:
        await nc.close()


def _shown(platform: RunningPlatform, text: str) -> bool:
    return text in platform.output()


def test_a_stolen_gateway_password_floods_msg_and_every_service_still_makes_its_consumers(
    platform: RunningPlatform,
) -> None:
    # What the services keep on a running platform (ordered consumers are named <service>_...):
    # the measure the quota is sized from.
    names = asyncio.run(_consumer_names(platform))
    kept = Counter(
        (stream, name.partition("_")[0]) for stream, listed in names.items() for name in listed if "_" in name
    )
    print(f"\nephemeral consumers per stream and service on a running platform: {dict(kept)}")
    assert max(kept.values()) <= EPHEMERAL_QUOTA
    assert _shown(platform, "consumer guard on")
    assert "SECURITY" not in platform.output()  # the guard found nothing to blame a service for at rest

    made = asyncio.run(_flood(platform))
    assert made > 0
    wait_until(lambda: _shown(platform, "SECURITY: gateway's NATS credential"), timeout=WAIT_S, what="the finding")
    wait_until(lambda: _shown(platform, "SECURITY: gateway quarantined"), timeout=WAIT_S, what="the quarantine")

    # Messaging starts again (its replays of AUTH and MSG), storage makes its archive consumer again.
    os.kill(int(str(platform.service("messaging")["pid"])), signal.SIGKILL)
    wait_until(lambda: _shown(platform, "messaging is serving again"), timeout=WAIT_S, what="messaging restarted")
    asyncio.run(_delete_archive_consumer(platform))
    wait_until(
        lambda: "storage-archive-msg" in asyncio.run(_consumer_names(platform))["MSG"],
        timeout=WAIT_S,
        what="storage's archive consumer made again",
    )
    wait_until(
        lambda: not any("_flood" in n for n in asyncio.run(_consumer_names(platform))["MSG"]),
        timeout=WAIT_S,
        what="the flood's consumers deleted",
    )
    assert "SECURITY (a service's credential made consumers it may not keep)" in platform.cli("parked").stdout
    assert "gateway: quarantined since" in platform.cli("quarantine").stdout

    with pytest.raises(nats.errors.TimeoutError):  # quarantined: its account may make no consumer
        asyncio.run(_gateway_makes_a_replay(platform))
    platform.cli("quarantine", "lift", "gateway")
    wait_until(lambda: _shown(platform, "gateway's quarantine lifted"), timeout=WAIT_S, what="the lift applied")
    asyncio.run(_gateway_makes_a_replay(platform))
    assert "platform: healthy" in platform.cli("status", check=False).stdout
    print(f"the gateway's credential made {made} consumers on MSG before its quarantine")
