"""Storage on a second host: two storage instances, one on each host, archiving into one PostgreSQL.

The first host is `parley up --nats-cluster 3 --database-url …`; host-b joins with storage and a
gateway (`parley host join BUNDLE --storage-keyring …`, the fleet's one KEK keyring; both hosts
are folders on this machine, so the first host's file is trivially shared). With the first host's
storage stopped, what is sent is archived by host-b's and read through host-b's gateway; with
both running, both archive from the same durable consumers, and history holds every message
exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from parley_client import ParleyClient, ParleyError
from parley_core.net import free_port
from parley_testing.platform import JoinedHost, RunningPlatform
from parley_testing.processes import run_module
from parley_testing.shared_postgres import schema_url, shared_schema
from parley_testing.stack import PASSWORD
from parley_testing.waiting import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

MESSAGES = 20


@pytest.fixture(scope="module")
def schema() -> Iterator[str]:
    """A schema of this module's own on the shared server; skipped, saying why, when there is none."""
    with shared_schema("parley_hosts") as (_, name):
        yield name


@pytest.fixture(scope="module")
def first_host(tmp_path_factory: pytest.TempPathFactory, schema: str) -> Iterator[RunningPlatform]:
    url = schema_url(schema)
    running = RunningPlatform(
        data_dir=tmp_path_factory.mktemp("host-a") / "data",
        env={"PARLEY_REGISTRATION": "open", "PARLEY_HEARTBEAT_SECONDS": "1"},
        up_args=("--gateway-port", str(free_port()), "--nats-cluster", "3", "--database-url", url),
    )
    yield from running.served()


def test_a_bundle_for_storage_carries_the_database_and_backup_keys_but_not_the_keyring(
    first_host: RunningPlatform, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    first_host.cli("host", "add", "host-c", "--services", "storage", "--out", str(bundle))
    secrets = first_host.data_dir / "secrets"
    for name in ("database-url", "storage-backup.key", "storage-backup-signing.pem", "storage-backup-signing.pub"):
        assert (bundle / "secrets" / name).read_bytes() == (secrets / name).read_bytes()
    assert not (bundle / "secrets" / "storage-kek.json").exists()
    assert not (bundle / "pki" / "ca.key").exists()
    # Joining without the fleet's keyring is refused before anything is written.
    joined = run_module("parley_cli", "--data-dir", str(tmp_path / "c"), "host", "join", str(bundle))
    assert joined.returncode == 2
    assert "--storage-keyring" in joined.stderr
    assert not (tmp_path / "c").exists()


@pytest.fixture(scope="module")
def host_b(first_host: RunningPlatform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JoinedHost]:
    keyring = first_host.data_dir / "secrets" / "storage-kek.json"
    joined = JoinedHost.join(
        first_host,
        tmp_path_factory.mktemp("host-b"),
        "host-b",
        "gateway,storage",
        {"PARLEY_HEARTBEAT_SECONDS": "1"},
        args=("--storage-keyring", str(keyring)),
    )
    try:
        yield joined
    finally:
        code = joined.stop() if joined.process.poll() is None else joined.process.returncode
    assert code == 0, joined.output()


async def bodies(client: ParleyClient, channel_id: str) -> list[str]:
    page = await client.history(channel_id, limit=500)
    return [m.body for m in page.messages]


async def test_two_hosts_storage_instances_archive_every_message_once(
    first_host: RunningPlatform, host_b: JoinedHost
) -> None:
    async def storage_on_b() -> bool | None:
        shown = (await asyncio.to_thread(first_host.cli, "fleet", check=False)).stdout
        return True if any(r.split()[:1] == ["storage"] and "host-b" in r for r in shown.splitlines()) else None

    await eventually(storage_on_b, "`parley fleet` to show host-b's storage", timeout=60)
    ca = first_host.ca_cert.read_bytes()
    alice = ParleyClient.connect(host_b.gateway_address, ca_cert=ca)
    await alice.register("alice", PASSWORD)
    await alice.login("alice", PASSWORD)
    channel = await alice.create_channel("two-archivers")

    async def channel_archived() -> bool | None:
        """The creation archived (by either instance): history answers instead of "not a member".
        Stopped while it held the creation in a batch, the first host's storage would keep it for
        the consumer's ack wait, which is not what this test is about."""
        try:
            return await bodies(alice, channel.channel_id) == [] or None
        except ParleyError as error:
            if "not a member" in str(error):
                return None
            raise

    await eventually(channel_archived, "the channel's creation in the archive", timeout=60)
    first_storage = [int(i["pid"]) for i in first_host.service("storage")["instances"] if i.get("pid")]  # type: ignore[union-attr]
    assert first_storage
    for pid in first_storage:  # stopped, not killed: its host does not start another
        os.kill(pid, signal.SIGSTOP)
    try:
        alone = [f"while the first host's storage is stopped {n}" for n in range(MESSAGES)]
        for body in alone:
            await alice.send(channel.channel_id, body)

        async def archived_on_b() -> bool | None:
            return True if await bodies(alice, channel.channel_id) == alone else None

        # Host-b's gateway reads host-b's storage, which archived them alone.
        await eventually(archived_on_b, "host-b's storage archiving and serving history", timeout=60)
    finally:
        for pid in first_storage:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    both = [f"with both archiving {n}" for n in range(MESSAGES)]
    for body in both:
        await alice.send(channel.channel_id, body)
    reader = ParleyClient.connect(first_host.gateway_address, ca_cert=ca)
    await reader.login("alice", PASSWORD)

    async def everything() -> list[str] | None:
        seen = await bodies(reader, channel.channel_id)
        return seen if set(seen) >= set(alone + both) else None

    seen = await eventually(everything, "every message in history on the first host", timeout=60)
    assert [body for body, count in Counter(seen).items() if count > 1] == []
    assert seen == alone + both
    state = json.loads((host_b.data_dir / "host.json").read_text())
    assert [i["service"] for i in state["instances"]].count("storage") == 1
    await alice.close()
    await reader.close()
