"""What a fleet's JetStream cluster looks like from the platform identity, for tests of hosts
that run NATS nodes (`parley host add --nats-node`)."""

from __future__ import annotations

import json
from pathlib import Path

from nats.aio.client import Client

from parley_core.nats_connect import connect_nats
from parley_core.topology import PLATFORM_USER
from parley_testing.waiting import eventually


async def connect_platform(first_host_data: Path, url: str, ca_cert: Path) -> Client:
    """The platform identity (the first host's password), connected to the nodes `url` names first."""
    passwords = json.loads((first_host_data / "secrets" / "nats-passwords.json").read_text())
    return await connect_nats(
        url=url,
        user=PLATFORM_USER,
        password=passwords[PLATFORM_USER],
        ca_cert=ca_cert,
        name="test-fleet-nats",
    )


async def streams_current_on(nc: Client, nodes: set[str]) -> str | None:
    """None when every stream has 3 replicas, its leader among `nodes` or its followers on them
    current, so that it lives on those nodes alone; else what is not yet so (for the wait's message)."""
    js = nc.jetstream()
    behind: list[str] = []
    for info in await js.streams_info():
        cluster = info.cluster
        name = info.config.name
        if info.config.num_replicas != 3 or cluster is None:
            behind.append(f"{name}: replicas {info.config.num_replicas}")
            continue
        current = {cluster.leader} | {r.name for r in cluster.replicas or [] if r.current and not r.offline}
        if not nodes <= current:
            behind.append(f"{name}: current on {sorted(n for n in current if n)}")
    return None if not behind else "; ".join(behind)


async def wait_current_on(first_host_data: Path, url: str, ca_cert: Path, nodes: set[str], timeout: float) -> None:
    """Until every stream lives on `nodes` alone (their replicas current), asked through `url`."""
    nc = await connect_platform(first_host_data, url, ca_cert)
    try:

        async def current() -> bool | None:
            return True if await streams_current_on(nc, nodes) is None else None

        await eventually(current, f"{', '.join(sorted(nodes))} current replicas of every stream", timeout)
    finally:
        await nc.close()
