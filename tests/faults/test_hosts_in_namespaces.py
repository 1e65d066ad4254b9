"""Hosts with addresses of their own: three network namespaces on a bridge (parley_testing.netns).

Host A (the first, `parley up --host-address A --nats-cluster 3`) runs every service; host B joins
with messaging and a gateway and takes over the JetStream cluster's node1 (`host add --nats-node
--address B`, `host join --host-address B`); host C takes node2 alone. Nothing listens on a
loopback another host could reach: each host's loopback is its own, so every address in the
fleet's state, the bundles and the NATS routes must be the host's own for this to run at all.
The client is the test process in the root namespace, over the bridge: people send through A's
gateway and B's, and every message is archived exactly once. Then every process of host A is
SIGKILLed (as in test_first_host_lost): the JetStream cluster lives on on B's and C's nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from failover import PASSWORD, all_bodies
from workload import publish_figures

from parley_client import ParleyClient, ParleyError
from parley_core.net import free_port
from parley_testing.fleet_nats import wait_current_on
from parley_testing.netns import Bridge, namespaces_on_a_bridge, netns_available
from parley_testing.platform import JoinedHost, RunningPlatform
from parley_testing.waiting import eventually

REASON = netns_available()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(bool(REASON), reason=REASON or "namespaces available")]

HOST_B_SERVICES = ("messaging", "gateway")
SENDS_PER_GATEWAY = 20
RETRY_PAUSE_S = 0.2  # a client's pacing between tries while a leader moves, not a wait for state


@dataclass
class Fleet:
    bridge: Bridge
    first: RunningPlatform
    host_b: JoinedHost
    host_c: JoinedHost


@pytest.fixture
def bridge() -> Iterator[Bridge]:
    with namespaces_on_a_bridge(3) as made:
        yield made


@pytest.fixture
def fleet(tmp_path: Path, bridge: Bridge) -> Iterator[Fleet]:
    a, b, c = bridge.hosts
    heartbeat = {"PARLEY_HEARTBEAT_SECONDS": "1"}
    first = RunningPlatform(
        data_dir=tmp_path / "first" / "data",
        env={"PARLEY_REGISTRATION": "open", **heartbeat},
        up_args=("--gateway-port", str(free_port()), "--host-address", a.address, "--nats-cluster", "3"),
        within=a.command,
    )
    (tmp_path / "first").mkdir()
    first.start()
    nats_pids = [int(p) for p in first.state["nats_pids"]]  # type: ignore[attr-defined]
    hosts: list[JoinedHost] = []
    try:
        hosts.append(
            JoinedHost.join(
                first,
                tmp_path / "host-b",
                "host-b",
                ",".join(HOST_B_SERVICES),
                heartbeat,
                args=("--host-address", b.address),
                add_args=("--nats-node", "--address", b.address),
                within=b.command,
            )
        )
        nats_url = str(first.state["nats_url"])
        asyncio.run(wait_current_on(first.data_dir, nats_url, first.ca_cert, {"parley-node1"}, 120))
        hosts.append(
            JoinedHost.join(
                first,
                tmp_path / "host-c",
                "host-c",
                "",
                args=("--host-address", c.address),
                add_args=("--nats-node", "--address", c.address),
                within=c.command,
            )
        )
        yield Fleet(bridge, first, hosts[0], hosts[1])
    finally:
        for host in hosts:
            host.kill()
        first.kill()
        for pid in nats_pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _host_of(address: str) -> str:
    return address.rsplit(":", 1)[0]


@pytest.mark.slow  # three hosts' start on a 2-core machine: minutes
@pytest.mark.timeout(900)
async def test_hosts_in_namespaces_serve_through_their_own_addresses(fleet: Fleet) -> None:
    a, b, c = fleet.bridge.hosts
    first, host_b = fleet.first, fleet.host_b
    # What the fleet advertises is each host's own address, never a loopback.
    assert _host_of(first.gateway_address) == a.address
    assert _host_of(host_b.gateway_address) == b.address
    assert _host_of(str(host_b.nats["url"]).split("//")[-1]) == b.address
    assert _host_of(str(fleet.host_c.nats["url"]).split("//")[-1]) == c.address

    async def host_b_serving() -> bool | None:
        shown = (await asyncio.to_thread(first.cli, "fleet", check=False)).stdout
        on_b = {row.split()[0] for row in shown.splitlines() if "host-b" in row.split() and "SERVING" in row}
        return True if on_b == set(HOST_B_SERVICES) else None

    await eventually(host_b_serving, "`parley fleet` to show host-b's instances serving", timeout=120)
    joined_nats = f"{host_b.nats['url']},{fleet.host_c.nats['url']}"
    await wait_current_on(first.data_dir, joined_nats, first.ca_cert, {"parley-node1", "parley-node2"}, 120)

    ca = first.ca_cert.read_bytes()
    owner = ParleyClient.connect(host_b.gateway_address, ca_cert=ca)
    await owner.register("sender", PASSWORD)
    await owner.login("sender", PASSWORD)
    channel = await owner.create_channel("hosts-in-namespaces")
    sent: list[str] = []
    for gateway in (first.gateway_address, host_b.gateway_address):
        client = ParleyClient.connect(gateway, ca_cert=ca)
        await client.login("sender", PASSWORD)
        for n in range(SENDS_PER_GATEWAY):
            body = f"via {gateway} {n}"
            await client.send(channel.channel_id, body, idempotency_key=body)
            sent.append(body)
        await client.close()

    history: list[str] = []
    last_refusal: list[str] = []

    reader = owner

    async def archived() -> bool | None:
        nonlocal history
        try:
            history = await all_bodies(reader, channel.channel_id)
        except ParleyError as error:  # storage (host A's) starting again after the loss
            last_refusal[:] = [str(error)]
            return None
        return True if set(sent) <= set(history) else None

    await eventually(archived, "every message sent through A and B in history", 120)
    assert [body for body, count in Counter(history).items() if count > 1] == []
    assert sorted(history) == sorted(sent)

    # Host A lost: kill -9 of its `parley up`, every instance and its NATS node. B's gateway
    # verifies the session it already issued by itself, B's messaging writes to the cluster's
    # two surviving nodes (B's and C's).
    for pid in first_host_pids(first):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    first.process.wait(timeout=60)  # type: ignore[union-attr]
    first.process = None
    retried = 0
    for n in range(SENDS_PER_GATEWAY):
        body = f"via {host_b.gateway_address} after A lost {n}"
        while True:  # the same key again until acknowledged: a stream's leader may be moving
            try:
                await owner.send(channel.channel_id, body, idempotency_key=body)
                break
            except ParleyError:
                retried += 1
                await asyncio.sleep(RETRY_PAUSE_S)
        sent.append(body)
    # Host A back (its data folder, its namespace, the same gateway port): its storage archives
    # what B took meanwhile. Read through A's gateway: A's other front doors come back on new
    # ports, which B's bundle does not know (only the gateway keeps its port across a restart).
    first.start()
    reader = ParleyClient.connect(first.gateway_address, ca_cert=ca)
    await reader.login("sender", PASSWORD)
    try:
        await eventually(archived, "the sends during A's loss in history once A is back", 240)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; history last refused: {last_refusal}") from exc
    duplicated = [body for body, count in Counter(history).items() if count > 1]
    publish_figures(
        "hosts-in-namespaces",
        {"sent": len(sent), "in_history": len(history), "duplicated": len(duplicated), "retried_after_loss": retried},
    )
    assert duplicated == []
    assert sorted(history) == sorted(sent)
    await reader.close()
    await owner.close()


def first_host_pids(first: RunningPlatform) -> list[int]:
    state = first.state
    services = state["services"]
    assert isinstance(services, dict)
    instances = [int(i["pid"]) for s in services.values() for i in s["instances"] if i.get("pid")]
    assert first.process is not None
    return [first.process.pid, *instances, *(int(p) for p in state["nats_pids"])]  # type: ignore[attr-defined]
