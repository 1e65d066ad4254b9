"""The first host lost under load: kill -9 of its `parley up`, every service instance and its NATS node.

Three hosts on loopback, the archive in a PostgreSQL server of the test's own: the first runs
`parley up --nats-cluster 3 --database-url …` (every service), host-b joins with messaging, a
gateway, auth and storage (`parley host join --storage-keyring`, the fleet's one KEK keyring)
and takes over the JetStream cluster's node1 (`parley host add --nats-node`); host-c joins with
node2 alone. The first host keeps node0. Senders on both gateways send one message after another
under idempotency keys; two watchers follow the channel's live stream, one through each gateway.
Once host-b's and host-c's nodes are current replicas of every stream, the first host's `parley
up` (its node agent and front doors), every instance it runs and its NATS node are SIGKILLed at
once: its senders and watcher move to host-b's gateway, log in there (host-b's auth), the senders
resend their message in flight under the same key and the watcher resumes its stream from its
last position. Every acknowledged message must be archived exactly once (host-b's storage) and
delivered to each watcher exactly once (three_hosts.lose_the_first_host_under_load).

The event log lives on: its streams' leaders move to the two joined nodes. So do roll-outs:
host-b runs a second patch registry on the first host's registry folder (`host join
--registry-folder`, as a shared file system would hold it), and its node agent moves to it when the
first host's stops answering. In the short run, a messaging release published before the loss is
then planned by one operator and approved by another through host-b's registry, and rolled out
over the surviving hosts' messaging while the senders go on: no call may fail meanwhile. Both
runs are in `make faults` (the short one takes 3-5 minutes, too long for `make test`), which keeps
their counts in fault-results/.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from three_hosts import ThreeHosts, lose_the_first_host_under_load, three_hosts

from parley_testing.platform import RunningPlatform
from parley_testing.postgres import PrivatePostgres

pytestmark = pytest.mark.e2e


@pytest.fixture
def fleet(tmp_path: Path, private_postgres: PrivatePostgres) -> Iterator[ThreeHosts]:
    with three_hosts(tmp_path, private_postgres.url) as hosts:
        yield hosts


def first_host_pids(first: RunningPlatform) -> list[int]:
    """`parley up` (agent, supervisor, front doors), every service instance it runs and its NATS node."""
    state = first.state
    services = state["services"]
    assert isinstance(services, dict)
    instances = [int(i["pid"]) for s in services.values() for i in s["instances"] if i.get("pid")]
    nats = [int(p) for p in state["nats_pids"]]  # type: ignore[union-attr]
    assert first.process is not None
    return [first.process.pid, *instances, *nats]


async def kill_9(first: RunningPlatform) -> list[int]:
    """The first host lost: SIGKILL to all of `first_host_pids` at once; their pids."""
    pids = first_host_pids(first)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


@pytest.mark.slow  # 3-5 min with three hosts' start and a roll-out on a 2-core machine: more than make test can spare
@pytest.mark.parametrize(
    ("senders_per_host", "acks_after", "scenario", "roll_out"),
    [
        pytest.param(
            1, 100, "first-host-lost-short", True, marks=pytest.mark.timeout(900), id="rolls-out-on-survivors"
        ),
        pytest.param(4, 3000, "first-host-lost", False, marks=pytest.mark.timeout(1200), id="heavy"),
    ],
)
async def test_the_first_host_lost_under_load_loses_nothing_acknowledged(
    fleet: ThreeHosts, senders_per_host: int, acks_after: int, scenario: str, roll_out: bool
) -> None:
    await lose_the_first_host_under_load(
        fleet,
        partial(kill_9, fleet.first),
        senders_per_host=senders_per_host,
        acks_after=acks_after,
        scenario=scenario,
        roll_out=roll_out,
    )
