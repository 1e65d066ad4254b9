"""Three hosts of one fleet and the first one lost under load: the first-host-loss tests' fleet and
scenario.

The first host runs every service, the JetStream cluster's three nodes and the archive in a
PostgreSQL server; host-b joins with messaging, a gateway, auth, storage (the fleet's one KEK
keyring) and a second patch registry on the first host's registry folder (as a file system the
hosts share would hold them) and takes over node1; host-c takes node2 alone. On loopback, or each
host in a network namespace of its own (`namespaces`: A, B, C).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from failover import (
    PASSWORD,
    FailoverSender,
    FailoverWatcher,
    assert_nothing_lost,
    close_all,
    delivered_to_all,
    enrol,
    history_holding,
    loss_figures,
    send_through_a_loss,
    watcher_figures,
)
from survivors_rollout import (
    ROLLOUT_ENV,
    assert_rolled_out_under_sends,
    publish_a_messaging_release,
    roll_out_under_sends,
)
from workload import publish_figures

from parley_client import ParleyClient
from parley_core.net import free_port
from parley_testing.fleet_nats import wait_current_on
from parley_testing.netns import Namespace
from parley_testing.platform import JoinedHost, RunningPlatform
from parley_testing.waiting import eventually

HOST_SERVICES: dict[str, tuple[str, ...]] = {
    "host-b": ("messaging", "gateway", "auth", "storage", "patch-registry"),
    # NATS node2 alone: a host without a registry of its own follows the first host's only, so after
    # the first host's loss its agent would take no roll-out step (node_agent.registry_addresses).
    "host-c": (),
}
JOINED_NODES = {"parley-node1", "parley-node2"}  # host-b's and host-c's: the first host keeps node0
ENV = {"PARLEY_HEARTBEAT_SECONDS": "1", **ROLLOUT_ENV}


@dataclass(frozen=True)
class ThreeHosts:
    first: RunningPlatform
    host_b: JoinedHost
    host_c: JoinedHost


def _on(host: Namespace | None, option: str) -> tuple[str, ...]:
    """`option` with the host's own address, for a host in a namespace; nothing on loopback."""
    return (option, host.address) if host is not None else ()


@contextlib.contextmanager
def three_hosts(root: Path, database_url: str, *, namespaces: Sequence[Namespace] = ()) -> Iterator[ThreeHosts]:
    a, b, c = namespaces or (None, None, None)
    (root / "first").mkdir()
    first = RunningPlatform(
        data_dir=root / "first" / "data",
        env={"PARLEY_REGISTRATION": "open", **ENV},
        up_args=(
            *("--gateway-port", str(free_port()), *_on(a, "--host-address")),
            *("--nats-cluster", "3", "--database-url", database_url),
        ),
        within=a.command if a is not None else list,
    )
    first.start()
    nats_pids = [int(p) for p in first.state["nats_pids"]]  # type: ignore[attr-defined]
    hosts: list[JoinedHost] = []
    try:
        keyring = first.data_dir / "secrets" / "storage-kek.json"
        hosts.append(
            JoinedHost.join(
                first,
                root / "host-b",
                "host-b",
                ",".join(HOST_SERVICES["host-b"]),
                ENV,
                args=(
                    *_on(b, "--host-address"),
                    *("--storage-keyring", str(keyring), "--registry-folder", str(first.data_dir / "patch-registry")),
                ),
                add_args=("--nats-node", *_on(b, "--address")),
                within=b.command if b is not None else list,
            )
        )
        # One node handed over at a time: host-b's current before node2 stops for host-c.
        nats_url = str(first.state["nats_url"])
        asyncio.run(wait_current_on(first.data_dir, nats_url, first.ca_cert, {"parley-node1"}, 120))
        hosts.append(
            JoinedHost.join(
                first,
                root / "host-c",
                "host-c",
                ",".join(HOST_SERVICES["host-c"]),
                ENV,
                args=_on(c, "--host-address"),
                add_args=("--nats-node", *_on(c, "--address")),
                within=c.command if c is not None else list,
            )
        )
        yield ThreeHosts(first, hosts[0], hosts[1])
    finally:
        for host in hosts:
            host.kill()
        first.kill()
        for pid in nats_pids:  # node0, in a session of its own: orphaned by a kill -9 of parley up
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@dataclass(frozen=True)
class Lost:
    channel_id: str
    history: list[str]  # every acknowledged send, each once


async def lose_the_first_host_under_load(
    fleet: ThreeHosts,
    lose: Callable[[], Awaitable[list[int]]],
    *,
    senders_per_host: int,
    acks_after: int,
    scenario: str,
    roll_out: bool,
    namespaces: Sequence[Namespace] = (),
    figures: Mapping[str, object] | None = None,
) -> Lost:
    """Senders on the first host's gateway (moving to host-b's once it is gone) and on host-b's, one
    message after another under idempotency keys, and two live watchers, one through each gateway;
    once host-b's and host-c's nodes are current replicas, `lose` kills the first host (its pids).
    Every acknowledged send must be archived once and delivered once to each watcher, no call may
    fail on the surviving host. With `roll_out`, a messaging release published before the loss is
    then rolled out over host-b through its registry while the senders go on, no call refused.
    The counts go to fault-results/`scenario` (with `figures`)."""
    first, host_b = fleet.first, fleet.host_b
    a, b = (namespaces[0].command, namespaces[1].command) if namespaces else (list, list)

    async def joined_hosts_serving() -> bool | None:
        rows = [row.split() for row in (await asyncio.to_thread(first.cli, "fleet", check=False)).stdout.splitlines()]
        serving = {host: {r[0] for r in rows if host in r and "SERVING" in r} for host in HOST_SERVICES}
        return True if serving == {host: set(services) for host, services in HOST_SERVICES.items()} else None

    await eventually(joined_hosts_serving, "`parley fleet` to show host-b's and host-c's instances serving", 120)
    joined_nats = f"{host_b.nats['url']},{fleet.host_c.nats['url']}"
    await wait_current_on(first.data_dir, joined_nats, first.ca_cert, JOINED_NODES, 120)
    nats_killed = len(first.state["nats_pids"])  # type: ignore[arg-type]

    ca = first.ca_cert.read_bytes()
    both = [first.gateway_address, host_b.gateway_address]
    owner = ParleyClient.connect(host_b.gateway_address, ca_cert=ca)
    await owner.register("watcher-a", PASSWORD)
    await owner.login("watcher-a", PASSWORD)
    channel = await owner.create_channel(scenario)
    # Even senders start on the first host's gateway and move to host-b's; odd ones stay on host-b's.
    senders = [
        FailoverSender(f"sender{n}", both if n % 2 == 0 else [host_b.gateway_address], ca)
        for n in range(senders_per_host * 2)
    ]
    await enrol(senders, channel.channel_id, host_b.gateway_address, ca, others=["watcher-b"])
    watchers = [FailoverWatcher("watcher-a", both, ca), FailoverWatcher("watcher-b", [host_b.gateway_address], ca)]
    watching = [asyncio.Event() for _ in watchers]
    watches = [asyncio.create_task(w.run(channel.channel_id, r)) for w, r in zip(watchers, watching, strict=True)]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in watching)), 60)

    if roll_out:  # before the loss, through the first host's registry, into the folder both registries use
        await publish_a_messaging_release(first.data_dir, [host_b.data_dir], within=a)

    async def roll_out_on_host_b() -> dict[str, object]:
        return await roll_out_under_sends(senders, host_b.gateway_address, host_b.data_dir, {"host-b"}, within=b)

    try:
        loss = await send_through_a_loss(
            senders,
            channel.channel_id,
            lose,
            acks_after=acks_after,
            what="the first host is lost",
            afterwards=roll_out_on_host_b if roll_out else None,
        )
        # A login on the surviving host after the loss: auth runs there.
        late = ParleyClient.connect(host_b.gateway_address, ca_cert=ca)
        await late.login("watcher-b", PASSWORD)
        await late.close()
        acked = [body for s in senders for body in s.acknowledged]
        history = await history_holding(owner, channel.channel_id, acked)
        await delivered_to_all(watchers, acked)
    finally:
        for watch in watches:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
    counted: dict[str, object] = {
        "hosts": 3,
        **(figures or {}),
        **loss_figures(senders, history, loss),
        **watcher_figures(watchers, acked),
        "nats_nodes_killed": nats_killed,
        "nats_nodes_on_joined_hosts": len(JOINED_NODES),
        **loss.afterwards,
    }
    publish_figures(scenario, counted)
    assert nats_killed == 1, "the first host's node0 is lost with it"
    assert_nothing_lost(senders, counted, "the first host")
    assert counted["delivered_live_twice"] == 0, counted
    assert watchers[0].resumes >= 1, "the watcher on the first host never resumed on host-b"
    if roll_out:
        assert_rolled_out_under_sends(counted, {"host-b"})
    await close_all([*(s.client for s in senders), owner])
    return Lost(channel.channel_id, history)
