"""Hosts with addresses of their own, one lost under load: four network namespaces on a bridge
(parley_testing.netns), and the archive in PostgreSQL on a host of its own.

The database host runs a PostgreSQL server the test makes (initdb, then postgres as the
`postgres` user), listening on its own address only and trusting the bridge's network. Host A
(`parley up --host-address A --nats-cluster 3 --database-url postgresql://…@DB`) runs every
service; host B joins with messaging, a gateway, auth, storage (`host join --storage-keyring`,
the fleet's one KEK keyring, archiving into the same database across the bridge) and a second
patch registry (`--registry-folder`: A's registry folder, as a shared file system holds it), and
takes over the JetStream cluster's node1 (`host add --nats-node --address B`); host C takes node2
alone. So each service that keeps no file of its own runs on two hosts, and every stream has 3
replicas on three hosts. Nothing listens on a loopback another host could reach: each host's
loopback is its own, so every address in the fleet's state, the bundles and the NATS routes must
be the host's.

The clients are the test process in the root namespace, over the bridge: senders on A's gateway
(moving to B's when A is gone) and on B's, one message after another under idempotency keys, and
two watchers following the channel's live stream, one through each gateway. Once B's and C's
nodes are current replicas, every process in A's namespace is SIGKILLed (`ip netns pids`): A's
senders and watcher move to B's gateway, log in there (B's auth), resend the message in flight
under the same key and resume the stream from its last position. In the short run, a messaging
release published through A's registry before the loss is then planned and approved by two
operators through B's registry and rolled out over the surviving messaging while the senders go
on: no call may fail meanwhile. Every acknowledged message must be archived exactly once (B's
storage, into the database host) and delivered once to each watcher. Then A starts again in its
namespace and serves the same history. Both runs are in `make faults` (three hosts' start takes
more than a minute, too long for `make test`), which keeps their counts in fault-results/.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from failover import PASSWORD, all_bodies
from three_hosts import ThreeHosts, lose_the_first_host_under_load, three_hosts

from parley_client import ParleyClient, ParleyError
from parley_testing.netns import Bridge, namespaces_on_a_bridge, netns_available
from parley_testing.platform import RunningPlatform
from parley_testing.postgres import PrivatePostgres, postgres_missing, postgres_server
from parley_testing.waiting import eventually

REASON = netns_available() or postgres_missing()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(bool(REASON), reason=REASON or "namespaces and PostgreSQL here")]


@dataclass
class Fleet:
    bridge: Bridge
    database: PrivatePostgres
    hosts: ThreeHosts


@pytest.fixture
def bridge() -> Iterator[Bridge]:
    with namespaces_on_a_bridge(4) as made:  # hosts A, B, C and the database host
        yield made


@pytest.fixture
def database(bridge: Bridge) -> Iterator[PrivatePostgres]:
    host = bridge.hosts[3]
    with postgres_server(listen=host.address, within=host.command, trusted=(bridge.network,)) as server:
        yield server


@pytest.fixture
def fleet(tmp_path: Path, bridge: Bridge, database: PrivatePostgres) -> Iterator[Fleet]:
    a, b, c, _ = bridge.hosts
    try:
        with three_hosts(tmp_path, database.url, namespaces=(a, b, c)) as hosts:
            yield Fleet(bridge, database, hosts)
    finally:
        a.kill_every_process()  # whatever else of A's outlived parley up's kill -9


def _host_of(address: str) -> str:
    return address.rsplit(":", 1)[0]


async def lose_host_a_under_load(
    fleet: Fleet, *, senders_per_host: int, acks_after: int, scenario: str, comes_back: bool, roll_out: bool
) -> None:
    a, b, c, db = fleet.bridge.hosts
    first, host_b, host_c = fleet.hosts.first, fleet.hosts.host_b, fleet.hosts.host_c
    # What the fleet advertises is each host's own address, never a loopback.
    assert _host_of(first.gateway_address) == a.address
    assert _host_of(host_b.gateway_address) == b.address
    assert _host_of(str(host_b.nats["url"]).split("//")[-1]) == b.address
    assert _host_of(str(host_c.nats["url"]).split("//")[-1]) == c.address
    assert f"@{db.address}:" in fleet.database.url

    async def lose_host_a() -> list[int]:
        pids = a.kill_every_process()  # parley up, every instance, node0: host A lost
        await asyncio.to_thread(first.process.wait, 60)  # type: ignore[union-attr]
        return pids

    lost = await lose_the_first_host_under_load(
        fleet.hosts,
        lose_host_a,
        senders_per_host=senders_per_host,
        acks_after=acks_after,
        scenario=scenario,
        roll_out=roll_out,
        namespaces=(a, b, c),
        figures={"database_host": db.address},
    )
    if comes_back:
        await host_a_serves_again(first, lost.channel_id, sorted(lost.history))


async def host_a_serves_again(first: RunningPlatform, channel_id: str, history: list[str]) -> None:
    """Host A started again (its data folder, its namespace, the same gateway port): its NATS node
    rejoins the cluster and its gateway serves the same history, from the one archive."""
    await asyncio.to_thread(first.start)
    reader = ParleyClient.connect(first.gateway_address, ca_cert=first.ca_cert.read_bytes())
    shown: list[str] = []

    async def served() -> bool | None:
        try:
            await reader.login("watcher-a", PASSWORD)
            shown[:] = await all_bodies(reader, channel_id)
        except ParleyError:  # A's services catching up with what B took meanwhile
            return None
        return True

    await eventually(served, "host A's gateway to serve history again", 120)
    assert sorted(shown) == history
    await reader.close()


@pytest.mark.slow  # four namespaces and three hosts' start on a 2-core machine: minutes, not for make test
@pytest.mark.timeout(900)
async def test_a_host_lost_under_load_in_namespaces_loses_nothing_acknowledged(fleet: Fleet) -> None:
    await lose_host_a_under_load(
        fleet, senders_per_host=2, acks_after=300, scenario="hosts-in-namespaces", comes_back=True, roll_out=True
    )


@pytest.mark.slow
@pytest.mark.timeout(1500)
async def test_a_host_lost_under_heavy_load_in_namespaces_loses_nothing_acknowledged(fleet: Fleet) -> None:
    await lose_host_a_under_load(
        fleet,
        senders_per_host=4,
        acks_after=3000,
        scenario="hosts-in-namespaces-heavy",
        comes_back=False,
        roll_out=False,
    )
