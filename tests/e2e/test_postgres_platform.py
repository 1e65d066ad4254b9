"""PostgreSQL as `parley up`'s database: chosen once with --database-url, kept by the data folder.

The platform starts against the shared test server (a schema of its own, dropped afterwards), takes
messages, stops, starts again without the flag and serves the same history from PostgreSQL; a
backup of that folder is of the PostgreSQL archive; another database on the same folder is refused.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from parley_client import ParleyClient
from parley_core.net import free_port
from parley_testing.platform import RunningPlatform
from parley_testing.shared_postgres import schema_url, shared_schema
from parley_testing.stack import PASSWORD
from parley_testing.waiting import eventually

pytestmark = pytest.mark.e2e

MESSAGES = 12
# What a restore needs from the key backup (README: "Backups").
RESTORE_SECRETS = ("storage-kek.json", "storage-backup.key", "storage-backup-signing.pub", "auth-mfa-key.bin")


@pytest.fixture(scope="module")
def schema() -> Iterator[tuple[Engine, str]]:
    """A schema of this module's own on the shared server; skipped, saying why, when there is none."""
    with shared_schema("parley_up") as schema:
        yield schema


def url_of(schema_name: str) -> str:
    return schema_url(schema_name)


@pytest.fixture
def platform(tmp_path_factory: pytest.TempPathFactory, schema: tuple[Engine, str]) -> Iterator[RunningPlatform]:
    root = tmp_path_factory.mktemp("pg-up")
    running = RunningPlatform(
        data_dir=root / "data",
        env={"PARLEY_REGISTRATION": "open"},
        up_args=("--gateway-port", str(free_port()), "--database-url", url_of(schema[1])),
    )
    try:
        yield running
    finally:
        running.kill()


def archived_rows(admin: Engine, schema_name: str) -> int:
    with admin.connect() as conn:
        return int(conn.execute(text(f'SELECT count(*) FROM "{schema_name}".events')).scalar_one())


async def person(platform: RunningPlatform, name: str, *, register: bool) -> ParleyClient:
    client = platform.client()
    if register:
        await client.register(name, PASSWORD)
    await client.login(name, PASSWORD)
    return client


async def bodies(client: ParleyClient, channel_id: str) -> list[str]:
    page = await client.history(channel_id, limit=500)
    return [m.body for m in page.messages]


async def shows(client: ParleyClient, channel_id: str, want: list[str]) -> bool | None:
    """True once history holds exactly `want` (the archive trails the send's acknowledgement)."""
    return True if await bodies(client, channel_id) == want else None


async def test_history_survives_a_restart_on_postgresql(
    platform: RunningPlatform, schema: tuple[Engine, str], tmp_path: Path
) -> None:
    admin, schema_name = schema
    platform.start()
    alice = await person(platform, "alice", register=True)
    channel = await alice.create_channel("on-postgres")
    sent = [f"message {i}" for i in range(MESSAGES)]
    for body in sent:
        await alice.send(channel.channel_id, body)
    await eventually(lambda: shows(alice, channel.channel_id, sent), "every message in history", timeout=60)
    await alice.close()
    assert archived_rows(admin, schema_name) >= MESSAGES, "the archive is not in PostgreSQL"
    assert not (platform.data_dir / "storage" / "archive.db").exists(), "storage wrote a SQLite archive too"

    assert platform.stop() == 0
    # Another database for this folder is refused: its archive is in the first one.
    refused = platform.cli("up", "--database-url", url_of(schema_name + "_other"), check=False)
    assert refused.returncode == 1
    assert "archive is in postgresql+psycopg://postgres@127.0.0.1:5432/test" in refused.stderr
    assert "--database-url" in refused.stderr
    platform.up_args = ("--gateway-port", str(free_port()))  # no --database-url: the folder remembers it
    platform.start()
    alice = await person(platform, "alice", register=False)
    assert await bodies(alice, channel.channel_id) == sent
    await alice.send(channel.channel_id, "after the restart")
    after = [*sent, "after the restart"]
    await eventually(lambda: shows(alice, channel.channel_id, after), "the new message in history", timeout=60)
    await alice.close()
    assert not (platform.data_dir / "storage" / "archive.db").exists()

    # A backup of this folder is of its PostgreSQL archive, with no --database-url either.
    made = platform.cli("backup", "create", str(tmp_path / "backup"), "--json", check=False)
    assert made.returncode == 0, made.stderr
    manifest = json.loads(made.stdout)
    assert manifest["event_counts"]["MSG"] >= MESSAGES + 1
    assert platform.cli("backup", "verify", str(tmp_path / "backup"), check=False).returncode == 0
    platform.kill()

    # Restored into PostgreSQL, the new folder keeps that database: `parley up` there needs no flag.
    restored = RunningPlatform(
        data_dir=tmp_path / "restored" / "data",
        env={"PARLEY_REGISTRATION": "open"},
        up_args=("--gateway-port", str(free_port())),
    )
    (restored.data_dir / "secrets").mkdir(parents=True)
    for secret in RESTORE_SECRETS:
        shutil.copy2(platform.data_dir / "secrets" / secret, restored.data_dir / "secrets" / secret)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema_name}_restored"'))
    try:
        done = restored.cli(
            "backup",
            "restore",
            str(tmp_path / "backup"),
            "--database-url",
            url_of(f"{schema_name}_restored"),
            check=False,
        )
        assert done.returncode == 0, done.stderr
        restored.start()
        assert "archive: PostgreSQL at postgresql+psycopg://postgres@127.0.0.1:5432/test" in restored.output()
        alice = await person(restored, "alice", register=False)
        assert await bodies(alice, channel.channel_id) == after
        await alice.close()
        assert archived_rows(admin, f"{schema_name}_restored") >= MESSAGES + 1
        assert not (restored.data_dir / "storage" / "archive.db").exists()
    finally:
        restored.kill()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema_name}_restored" CASCADE'))


def test_a_url_that_is_no_database_is_refused(tmp_path: Path) -> None:
    folder = RunningPlatform(data_dir=tmp_path / "data")
    refused = folder.cli("up", "--database-url", "mysql://someone@db/parley", check=False)
    assert refused.returncode == 2
    assert "postgresql://" in refused.stderr
    assert not (tmp_path / "data" / "secrets").exists(), "a refused start wrote to the folder"
