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
import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from failover import PASSWORD, FailoverSender, FailoverWatcher, all_bodies, history_holding, send_through_a_loss
from survivors_rollout import ROLLOUT_ENV, publish_a_messaging_release, roll_out_messaging
from workload import publish_figures

from parley_client import ParleyClient, ParleyError
from parley_core.net import free_port
from parley_testing.fleet_nats import wait_current_on
from parley_testing.netns import Bridge, namespaces_on_a_bridge, netns_available
from parley_testing.platform import JoinedHost, RunningPlatform
from parley_testing.postgres import PrivatePostgres, postgres_missing, postgres_server
from parley_testing.waiting import eventually, until

REASON = netns_available() or postgres_missing()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(bool(REASON), reason=REASON or "namespaces and PostgreSQL here")]

HOST_SERVICES = {
    "host-b": ("messaging", "gateway", "auth", "storage", "patch-registry"),
    # NATS node2 alone: a host without a registry of its own follows the first host's only, so after
    # A's loss its agent would take no roll-out step (node_agent.registry_addresses).
    "host-c": (),
}
JOINED_NODES = {"parley-node1", "parley-node2"}  # B's and C's: A keeps node0
ENV = {"PARLEY_HEARTBEAT_SECONDS": "1", **ROLLOUT_ENV}


@dataclass
class Fleet:
    bridge: Bridge
    database: PrivatePostgres
    first: RunningPlatform
    host_b: JoinedHost
    host_c: JoinedHost


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
    (tmp_path / "first").mkdir()
    first = RunningPlatform(
        data_dir=tmp_path / "first" / "data",
        env={"PARLEY_REGISTRATION": "open", **ENV},
        up_args=(
            "--gateway-port",
            str(free_port()),
            "--host-address",
            a.address,
            "--nats-cluster",
            "3",
            "--database-url",
            database.url,
        ),
        within=a.command,
    )
    first.start()
    hosts: list[JoinedHost] = []
    try:
        keyring = first.data_dir / "secrets" / "storage-kek.json"  # a file system the hosts share
        hosts.append(
            JoinedHost.join(
                first,
                tmp_path / "host-b",
                "host-b",
                ",".join(HOST_SERVICES["host-b"]),
                ENV,
                # The first host's registry folder, as a file system both hosts share would hold it.
                args=(
                    *("--host-address", b.address, "--storage-keyring", str(keyring)),
                    *("--registry-folder", str(first.data_dir / "patch-registry")),
                ),
                add_args=("--nats-node", "--address", b.address),
                within=b.command,
            )
        )
        # One node handed over at a time: B's current before node2 stops for C.
        nats_url = str(first.state["nats_url"])
        asyncio.run(wait_current_on(first.data_dir, nats_url, first.ca_cert, {"parley-node1"}, 120))
        hosts.append(
            JoinedHost.join(
                first,
                tmp_path / "host-c",
                "host-c",
                ",".join(HOST_SERVICES["host-c"]),
                ENV,
                args=("--host-address", c.address),
                add_args=("--nats-node", "--address", c.address),
                within=c.command,
            )
        )
        yield Fleet(bridge, database, first, hosts[0], hosts[1])
    finally:
        for host in hosts:
            host.kill()
        first.kill()
        a.kill_every_process()  # node0 is in a session of its own: orphaned by a kill -9 of parley up


def _delivered(watcher: FailoverWatcher, acked: list[str]) -> Callable[[], bool]:
    return lambda: set(acked) <= set(watcher.delivered)


def _host_of(address: str) -> str:
    return address.rsplit(":", 1)[0]


async def lose_host_a_under_load(
    fleet: Fleet, *, senders_per_host: int, acks_after: int, scenario: str, comes_back: bool, roll_out: bool
) -> None:
    a, b, c, db = fleet.bridge.hosts
    first, host_b = fleet.first, fleet.host_b
    # What the fleet advertises is each host's own address, never a loopback.
    assert _host_of(first.gateway_address) == a.address
    assert _host_of(host_b.gateway_address) == b.address
    assert _host_of(str(host_b.nats["url"]).split("//")[-1]) == b.address
    assert _host_of(str(fleet.host_c.nats["url"]).split("//")[-1]) == c.address
    assert f"@{db.address}:" in fleet.database.url

    async def joined_hosts_serving() -> bool | None:
        rows = [row.split() for row in (await asyncio.to_thread(first.cli, "fleet", check=False)).stdout.splitlines()]
        serving = {host: {r[0] for r in rows if host in r and "SERVING" in r} for host in HOST_SERVICES}
        return True if serving == {host: set(services) for host, services in HOST_SERVICES.items()} else None

    await eventually(joined_hosts_serving, "`parley fleet` to show host-b's and host-c's instances serving", 120)
    joined_nats = f"{host_b.nats['url']},{fleet.host_c.nats['url']}"
    await wait_current_on(first.data_dir, joined_nats, first.ca_cert, JOINED_NODES, 120)

    ca = first.ca_cert.read_bytes()
    both = [first.gateway_address, host_b.gateway_address]
    owner = ParleyClient.connect(host_b.gateway_address, ca_cert=ca)
    await owner.register("watcher-a", PASSWORD)
    await owner.login("watcher-a", PASSWORD)
    channel = await owner.create_channel("hosts-in-namespaces")
    # Even senders start on A's gateway and move to B's; odd ones stay on B's.
    senders = [
        FailoverSender(f"sender{n}", both if n % 2 == 0 else [host_b.gateway_address], ca)
        for n in range(senders_per_host * 2)
    ]
    for person in [s.name for s in senders] + ["watcher-b"]:
        registering = ParleyClient.connect(host_b.gateway_address, ca_cert=ca)
        await registering.register(person, PASSWORD)
        await registering.login(person, PASSWORD)
        await registering.join_channel(channel.channel_id)
        await registering.close()
    for sender in senders:
        await sender.connect()
    watchers = [FailoverWatcher("watcher-a", both, ca), FailoverWatcher("watcher-b", [host_b.gateway_address], ca)]
    watching = [asyncio.Event() for _ in watchers]
    watches = [asyncio.create_task(w.run(channel.channel_id, r)) for w, r in zip(watchers, watching, strict=True)]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in watching)), 60)

    if roll_out:  # before the loss, through A's registry, into the folder both registries use
        await publish_a_messaging_release(first.data_dir, [host_b.data_dir], within=a.command)

    async def roll_out_on_b_and_c() -> dict[str, object]:
        """Through B's registry, every sender on B's gateway first (a send in flight on the lost one
        fails at its deadline): from here on no call may fail."""
        await until(
            lambda: all(s.addresses[s.at] == host_b.gateway_address for s in senders),
            "every sender moved to host-b's gateway",
            120,
        )
        refused, acked = sum(s.refused for s in senders), sum(len(s.acknowledged) for s in senders)
        rolled = await roll_out_messaging(host_b.data_dir, {"host-b"}, within=b.command)
        rolled["acknowledged_during_rollout"] = sum(len(s.acknowledged) for s in senders) - acked
        rolled["refused_during_rollout"] = sum(s.refused for s in senders) - refused
        return rolled

    async def lose_host_a() -> list[int]:
        pids = a.kill_every_process()  # parley up, every instance, node0: host A lost
        await asyncio.to_thread(first.process.wait, 60)  # type: ignore[union-attr]
        return pids

    try:
        loss = await send_through_a_loss(
            senders,
            channel.channel_id,
            lose_host_a,
            acks_after=acks_after,
            what="host A is lost",
            afterwards=roll_out_on_b_and_c if roll_out else None,
        )
        # A login on the surviving host after the loss: auth runs there.
        late = ParleyClient.connect(host_b.gateway_address, ca_cert=ca)
        await late.login("watcher-b", PASSWORD)
        await late.close()
        acked = [body for s in senders for body in s.acknowledged]
        history = await history_holding(owner, channel.channel_id, acked)
        for watcher in watchers:
            await until(_delivered(watcher, acked), f"every acknowledged send delivered live to {watcher.name}", 120)
    finally:
        for watch in watches:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
    duplicated = [body for body, count in Counter(history).items() if count > 1]
    delivered_twice = {w.name: [m for m, k in Counter(w.delivered).items() if k > 1] for w in watchers}
    refusals = [r for s in senders for r in s.refusals]
    figures: dict[str, object] = {
        "hosts": 3,
        "database_host": db.address,
        "acknowledged": len(acked),
        "acknowledged_before_kill": loss.acknowledged_before,
        "in_history": len(history),
        "lost": len(set(acked) - set(history)),
        "duplicated": len(duplicated),
        **{f"delivered_live_{w.name}": len(w.delivered) for w in watchers},
        **{f"not_delivered_live_{w.name}": len(set(acked) - set(w.delivered)) for w in watchers},
        "delivered_live_twice": sum(len(twice) for twice in delivered_twice.values()),
        **{f"resumes_{w.name}": w.resumes for w in watchers},
        "refused_calls": sum(s.refused for s in senders),
        "refused_on_the_surviving_host": sum(s.refused for s in senders if len(s.addresses) == 1),
        "refusals": refusals[:10],
        "moved_to_other_gateway": sum(s.moves for s in senders),
        "killed_pids": len(loss.killed_pids),
        "seconds_to_acks_after_kill": loss.seconds_to_acks_after,
        **loss.afterwards,
    }
    publish_figures(scenario, figures)
    assert figures["lost"] == 0
    assert duplicated == []
    assert delivered_twice == {w.name: [] for w in watchers}
    assert not [r for r in refusals if "INTERNAL" in r], figures
    assert figures["refused_on_the_surviving_host"] == 0, figures
    if roll_out:
        assert figures["refused_during_rollout"] == 0, figures
        assert figures["rolled_out_on"] == ["host-b"], figures
        assert int(figures["acknowledged_during_rollout"]) > 0, figures  # type: ignore[call-overload]
    assert all(s.moves >= 1 for s in senders if len(s.addresses) == 2), "a sender on host A never moved"
    assert watchers[0].resumes >= 1, "the watcher on host A never resumed on host B"
    for s in senders:
        if s.client is not None:
            await s.client.close()
    await owner.close()
    if comes_back:
        await host_a_serves_again(fleet, channel.channel_id, sorted(history))


async def host_a_serves_again(fleet: Fleet, channel_id: str, history: list[str]) -> None:
    """Host A started again (its data folder, its namespace, the same gateway port): its NATS node
    rejoins the cluster and its gateway serves the same history, from the one archive."""
    await asyncio.to_thread(fleet.first.start)
    reader = ParleyClient.connect(fleet.first.gateway_address, ca_cert=fleet.first.ca_cert.read_bytes())
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
