"""kill -9 of services, of nats-server and a stop of the whole platform while members send.

Every test drives the platform as `make run` starts it (`parley up`, which restarts a crashed
service) and ends with the same audit: every acknowledged send is archived exactly once with
gap-free channel sequence numbers, and reached every member's live stream exactly once: a
stream broken by the fault (a gateway crash, a platform restart) is reopened resuming after the
last position it read, so messages published while it was down arrive live too.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import pytest
import pytest_asyncio
from workload import ChatWorkload, audit, until

from parley_core.net import free_port
from parley_testing.platform import RunningPlatform
from parley_testing.postgres import PrivatePostgres

pytestmark = pytest.mark.e2e

DATABASE_DOWN_FOR_ACKS = 250
DATABASE_OUTAGE_S = 15.0
SERVICES_IN_TURN = ("auth", "messaging", "storage", "gateway", "patch-registry")
NATS_KILLS = 3


def fresh_platform(data_dir: Path, **env: str) -> RunningPlatform:
    """A platform whose gateway asks for a free port: on a shared machine another platform may
    take the default 7443 while this one restarts, and clients can follow only a fixed port."""
    return RunningPlatform(data_dir=data_dir, env=env, up_args=("--gateway-port", str(free_port())))


@pytest.fixture
def running(tmp_path: Path) -> Iterator[RunningPlatform]:
    platform = fresh_platform(tmp_path / "data")
    yield from platform.served()


@pytest_asyncio.fixture
async def workloads() -> AsyncIterator[list[ChatWorkload]]:
    """Closes every workload a test started, also when the test fails half-way."""
    made: list[ChatWorkload] = []
    yield made
    for workload in made:
        await workload.close()


async def started_workload(
    platform: RunningPlatform, workloads: list[ChatWorkload], *, send_once: bool = False
) -> ChatWorkload:
    workload = ChatWorkload(platform.gateway_address, platform.ca_cert.read_bytes())
    workloads.append(workload)
    await workload.set_up()
    await workload.start(send_once=send_once)
    return workload


async def crash(platform: RunningPlatform, service: str) -> None:
    """SIGKILL one service and wait for `parley up` to have it serving again."""
    again = f"{service} is serving again"
    before = platform.output().count(again)
    pid = platform.service(service)["pid"]
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGKILL)
    await until(lambda: platform.output().count(again) > before, timeout=120, what=f"{service} to be restarted")


async def finish(
    workload: ChatWorkload, scenario: str, notes: str = "", recovery: list[dict[str, float | None]] | None = None
) -> None:
    await workload.stop_sending()
    live = await workload.live_after_reconnect()
    assert all(count == len(workload.members) for count in live.values()), live
    await audit(workload, scenario, notes=notes, recovery=recovery)
    await workload.close()


Recovery = dict[str, float | None]
Fault = Callable[[ChatWorkload], Awaitable[Recovery | None]]  # what it measured of the recovery, if anything


async def faults_while_sending(
    platform: RunningPlatform,
    workloads: list[ChatWorkload],
    faults: Sequence[Fault],
    scenario: str,
    *,
    acks: int,
    notes: str = "",
    send_once: bool = False,
) -> None:
    """Members sending all along: each fault in turn once `acks` more sends are acknowledged, `acks`
    more after the last, then the audit (with the recoveries the faults measured)."""
    workload = await started_workload(platform, workloads, send_once=send_once)
    await workload.wait_acknowledged(acks)
    recovery = []
    for fault in faults:
        if (recovered := await fault(workload)) is not None:
            recovery.append(recovered)
        await workload.wait_acknowledged(acks)
    await finish(workload, scenario, notes=notes, recovery=recovery or None)


def crashed(platform: RunningPlatform, service: str) -> Fault:
    async def fault(_: ChatWorkload) -> None:
        await crash(platform, service)

    return fault


def nats_killed(platform: RunningPlatform, node: int | None = None) -> Fault:
    async def fault(workload: ChatWorkload) -> Recovery:
        return await kill_nats(platform, workload, node)

    return fault


async def kill_nats(
    platform: RunningPlatform, workload: ChatWorkload, node: int | None = None
) -> dict[str, float | None]:
    """SIGKILL nats-server (or cluster node `node`); `parley up` must start it again by itself.

    Returns the recovery: seconds until `parley up` said it serves again, and until a send begun
    after the kill was acknowledged.
    """
    name, folder = ("nats-server", "nats") if node is None else (f"nats-server-{node}", f"nats/node{node}")
    again = f"{name} is serving again"
    before = platform.output().count(again)
    pid = nats_pid(platform.data_dir / folder / "nats-server.conf")
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    await until(lambda: platform.output().count(again) > before, timeout=120, what=f"`parley up` to restart {name}")
    back_s = time.monotonic() - killed_at
    assert f"UNHEALTHY: {name} stopped" in platform.output()
    assert nats_pid(platform.data_dir / folder / "nats-server.conf") != pid
    await until(
        lambda: workload.ledger.resumed_after(killed_at) is not None, timeout=120, what="sends acknowledged again"
    )
    resumed = workload.ledger.resumed_after(killed_at)
    return {"broker_back_s": round(back_s, 2), "sends_resumed_s": None if resumed is None else round(resumed, 2)}


async def test_messaging_killed_while_sending_loses_nothing(
    running: RunningPlatform, workloads: list[ChatWorkload]
) -> None:
    """The short fault run inside `make test`: the service that appends sends dies mid-load."""
    await faults_while_sending(running, workloads, [crashed(running, "messaging")], "kill9-messaging-short", acks=15)


@pytest.mark.slow
async def test_whole_platform_stopped_and_started_while_sending(
    running: RunningPlatform, workloads: list[ChatWorkload]
) -> None:
    import asyncio

    async def stopped_and_started(_: ChatWorkload) -> None:
        address = running.gateway_address
        assert await asyncio.to_thread(running.stop) == 0
        await asyncio.to_thread(running.start)
        # Clients know one address; a gateway that moved port on restart would strand them all.
        assert running.gateway_address == address

    await faults_while_sending(running, workloads, [stopped_and_started], "whole-platform-restart", acks=30)


def nats_pid(config: Path) -> int:
    """The nats-server that `parley up` started, found by its config file in /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(config).encode() in cmdline and any(part.endswith(b"nats-server") for part in cmdline):
            return int(entry.name)
    raise LookupError(f"no nats-server running with {config}")


async def test_nats_killed_while_clients_send_once_comes_back_by_itself(
    running: RunningPlatform, workloads: list[ChatWorkload]
) -> None:
    """The short broker fault inside `make test`: nobody but `parley up` starts nats-server again,
    and clients that call send() once per message see each acknowledged once, none refused."""
    import asyncio

    async def killed_once(workload: ChatWorkload) -> Recovery:
        recovery = await kill_nats(running, workload)
        status = await asyncio.to_thread(running.cli, "status")
        [broker] = [line for line in status.stdout.splitlines() if line.startswith("nats-server")]
        assert broker.split()[-3:] == ["SERVING", "(restarted", "1x)"], status.stdout
        return recovery

    await faults_while_sending(
        running,
        workloads,
        [killed_once],
        "kill9-nats-short",
        acks=15,
        notes="nats-server SIGKILLed once; parley up restarts it",
        send_once=True,
    )


def each_service_in_turn(platform: RunningPlatform) -> list[Fault]:
    return [crashed(platform, service) for service in SERVICES_IN_TURN]


def nats_again_and_again(platform: RunningPlatform) -> list[Fault]:
    return [nats_killed(platform) for _ in range(NATS_KILLS)]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("faults", "scenario", "notes", "send_once"),
    [
        pytest.param(
            each_service_in_turn,
            "kill9-each-service",
            "auth, messaging, storage, gateway, patch-registry in turn",
            False,
            id="each-service-killed-in-turn",
        ),
        pytest.param(
            nats_again_and_again,
            "nats-kill9-supervised",
            f"nats-server SIGKILLed {NATS_KILLS} times; parley up restarts it with the same config and store",
            True,  # clients that call send() once per message
            id="nats-killed-again-and-again",
        ),
    ],
)
async def test_killed_in_turn_while_sending(
    running: RunningPlatform,
    workloads: list[ChatWorkload],
    faults: Callable[[RunningPlatform], list[Fault]],
    scenario: str,
    notes: str,
    send_once: bool,
) -> None:
    await faults_while_sending(running, workloads, faults(running), scenario, acks=30, notes=notes, send_once=send_once)


@pytest.mark.slow
async def test_database_killed_and_restarted_while_sending(
    private_postgres: PrivatePostgres, tmp_path: Path, workloads: list[ChatWorkload]
) -> None:
    """Storage archives into PostgreSQL; the database crashes and stays down for a while."""
    import asyncio

    platform = fresh_platform(tmp_path / "data", PARLEY_DATABASE_URL=private_postgres.url)
    platform.start()
    try:
        workload = await started_workload(platform, workloads)
        await workload.wait_acknowledged(30)
        await asyncio.to_thread(private_postgres.kill)
        # Sends are acknowledged by JetStream, not by the archive: they go on without a database.
        # The outage length is the scenario, not a wait for a condition: longer than the archive
        # consumer's redelivery budget (5 deliveries, ~6 s of backoff), while sends go on.
        down_since = time.monotonic()
        await workload.wait_acknowledged(DATABASE_DOWN_FOR_ACKS)
        await asyncio.sleep(max(0.0, DATABASE_OUTAGE_S - (time.monotonic() - down_since)))
        await asyncio.to_thread(private_postgres.start)
        await workload.wait_acknowledged(30)
        await finish(
            workload, "postgres-kill9-restart", notes=f"private PostgreSQL SIGKILLed, down >= {DATABASE_OUTAGE_S:.0f} s"
        )
    finally:
        platform.kill()


@pytest.mark.slow
async def test_parley_up_on_a_nats_cluster_loses_a_node_while_sending(
    tmp_path: Path, workloads: list[ChatWorkload]
) -> None:
    """`parley up --nats-cluster 3`: every stream on three nodes, so sending outlives one of them."""
    import json

    from parley_core.nats_connect import connect_nats
    from parley_core.topology import PLATFORM_USER

    platform = RunningPlatform(
        data_dir=tmp_path / "data", up_args=("--gateway-port", str(free_port()), "--nats-cluster", "3")
    )
    platform.start()
    try:
        urls = str(platform.state["nats_url"])
        assert len(urls.split(",")) == 3
        passwords = json.loads((platform.data_dir / "secrets" / "nats-passwords.json").read_text())
        nc = await connect_nats(
            url=urls, user=PLATFORM_USER, password=passwords[PLATFORM_USER], ca_cert=platform.ca_cert, name="fault-test"
        )
        try:
            info = await nc.jetstream().stream_info("MSG")
        finally:
            await nc.close()
        assert info.config.num_replicas == 3
        await faults_while_sending(
            platform,
            workloads,
            [nats_killed(platform, node) for node in (1, 0, 2)],
            "parley-up-nats-cluster-node-kill9",
            acks=30,
            notes="parley up --nats-cluster 3; nodes 1, 0, 2 SIGKILLed in turn, each restarted by parley up",
            send_once=True,
        )
    finally:
        platform.kill()
