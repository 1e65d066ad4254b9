"""Joined hosts run the JetStream cluster's nodes: the event log outlives the first host.

The first host is `parley up --nats-cluster 3`; `parley host add host-b --nats-node` hands its
node1 to host-b and `host add host-c --nats-node` its node2 to host-c (each joins with no
services, only the node). Once both are current replicas of every stream, the first host's
`parley up`, every instance it runs and its node0 are killed with `kill -9` (after a restart of
the first host, whose node0 finds the moved nodes again on its kept route port, and whose front
doors come back on the ports the joined hosts' bundles name): the two joined nodes elect leaders
among themselves, and an event published then is acknowledged and kept with the event appended
before the loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import nats.errors
import pytest

from parley_core.net import free_port
from parley_testing.fleet_nats import connect_platform, wait_current_on
from parley_testing.platform import JoinedHost, RunningPlatform
from parley_testing.waiting import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]  # a host lost: `make test-all`

JOINED_NODES = {"parley-node1", "parley-node2"}
PROBE_SUBJECT = "parley.parked.messaging.nats-node-test"  # the PARKED stream's, which no service reads


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[RunningPlatform, list[JoinedHost]]]:
    (tmp_path / "first").mkdir()
    first = RunningPlatform(
        data_dir=tmp_path / "first" / "data",
        env={"PARLEY_HEARTBEAT_SECONDS": "1"},
        up_args=("--gateway-port", str(free_port()), "--nats-cluster", "3"),
    )
    first.start()
    hosts: list[JoinedHost] = []
    try:
        hosts.append(JoinedHost.join(first, tmp_path / "host-b", "host-b", "", add_args=("--nats-node",)))
        yield first, hosts  # the test joins host-c once host-b's node has caught up
    finally:
        for host in hosts:
            host.kill()
        nats_pids = [int(p) for p in first.state.get("nats_pids", [])]  # type: ignore[attr-defined]
        first.kill()
        for pid in nats_pids:  # node0, its own session: orphaned by a kill -9 of parley up
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def test_streams_keep_working_when_the_first_hosts_node_is_killed(
    fleet: tuple[RunningPlatform, list[JoinedHost]], tmp_path: Path
) -> None:
    first, hosts = fleet
    host_b = hosts[0]
    # One node handed over at a time: host-b's node current before node2 stops for host-c.
    await wait_current_on(first.data_dir, str(first.state["nats_url"]), first.ca_cert, {"parley-node1"}, 120)
    host_c = await asyncio.to_thread(
        JoinedHost.join, first, tmp_path / "host-c", "host-c", "", add_args=("--nats-node",)
    )
    hosts.append(host_c)
    bundle = tmp_path / "host-b" / "bundle"
    assert json.loads((bundle / "fleet.json").read_text())["nats_node"]["name"] == "parley-node1"
    assert (bundle / "pki" / "nats.crt").is_file()
    assert not (bundle / "pki" / "ca.key").exists()
    nodes = {n["name"]: n for n in first.state["nats"]}  # type: ignore[attr-defined]
    assert nodes["nats-server-1"]["moved_to"] == "host-b"
    assert not nodes["nats-server-1"]["running"]
    assert host_c.nats["name"] == "parley-node2"
    status = first.cli("status", check=False).stdout
    assert re.search(r"nats-server-1 .*on host host-b", status), status
    assert re.search(r"nats-server-2 .*on host host-c", status), status
    # The first host keeps node0: a fourth bundle has no node left to take.
    refused = first.cli("host", "add", "host-d", "--nats-node", "--out", str(tmp_path / "d"), check=False)
    assert refused.returncode == 2
    assert "node0" in refused.stderr
    assert not (tmp_path / "d").exists()

    joined_urls = f"{host_b.nats['url']},{host_c.nats['url']}"
    await wait_current_on(first.data_dir, joined_urls, first.ca_cert, JOINED_NODES, 120)

    # The first host restarted: its node0 comes back on the same route port, which the moved
    # nodes know, and is a current replica again beside them.
    route_before = first.state["nats"][0]["route"]  # type: ignore[index]
    assert await asyncio.to_thread(first.stop) == 0
    await asyncio.to_thread(first.start)
    assert first.state["nats"][0]["route"] == route_before  # type: ignore[index]
    # Its front doors too: the addresses host-b's bundle gave its services and agent still answer.
    given = json.loads((bundle / "fleet.json").read_text())
    services = first.state["services"]
    assert isinstance(services, dict)
    assert given["registry_address"] == services["patch-registry"]["address"]
    assert {peer: services[peer]["address"] for peer in given["peers"]} == given["peers"]
    node0_url = str(first.state["nats_url"])
    await wait_current_on(first.data_dir, node0_url, first.ca_cert, {"parley-node0", *JOINED_NODES}, 120)
    nc = await connect_platform(first.data_dir, joined_urls, first.ca_cert)
    try:
        js = nc.jetstream()  # type: ignore[attr-defined]
        before = await js.publish(PROBE_SUBJECT, b"before")

        state = first.state
        services = state["services"]
        assert isinstance(services, dict)
        pids = [first.process.pid]  # type: ignore[union-attr]
        pids += [int(i["pid"]) for s in services.values() for i in s["instances"] if i.get("pid")]
        pids += [int(p) for p in state["nats_pids"]]  # type: ignore[union-attr]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

        after = await eventually(lambda: _published(js), "a publish acknowledged after the first host is lost", 60)
        assert after.stream == before.stream
        assert after.seq == before.seq + 1
        info = await js.stream_info(before.stream)
        assert info.cluster is not None
        assert info.cluster.leader in JOINED_NODES
        kept = await js.get_msg(before.stream, before.seq)
        assert kept.data == b"before"
    finally:
        await nc.close()


async def _published(js):  # type: ignore[no-untyped-def]
    try:
        return await js.publish(PROBE_SUBJECT, b"after", timeout=2)
    except (nats.errors.Error, TimeoutError):  # no leader yet (an election after the loss): tried again
        return None
