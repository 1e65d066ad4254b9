"""A single-node data folder moves to a three-node JetStream cluster the way docs/deploy.md says:
`parley up --nats-cluster 3` refuses the folder itself, so a backup restored into a new folder
is started as a cluster there (the re-seed writes the restored events into the cluster)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from parley_core.net import free_port
from parley_testing.platform import RunningPlatform, platform_in
from parley_testing.stack import PASSWORD

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

# The key backup restore needs (docs/storage.md, "Backups"), and the CA so clients keep trusting it.
KEY_BACKUP = ("storage-kek.json", "storage-backup.key", "storage-backup-signing.pub", "auth-mfa-key.bin")


async def test_a_single_nodes_backup_restores_into_a_cluster(tmp_path: Path) -> None:
    (tmp_path / "single").mkdir()
    single = platform_in(tmp_path / "single")
    single.start()
    try:
        alice = await single.new_user("alice")
        channel = (await alice.create_channel("general")).channel_id
        await alice.send(channel, "before the move")
        await alice.close()
        backup = tmp_path / "backup"
        single.cli("backup", "create", str(backup))
    finally:
        single.stop()

    clustered = tmp_path / "clustered" / "data"
    (clustered / "secrets").mkdir(parents=True)
    for name in KEY_BACKUP:
        shutil.copy2(single.data_dir / "secrets" / name, clustered / "secrets" / name)
    shutil.copytree(single.data_dir / "pki", clustered / "pki")
    cluster = RunningPlatform(
        data_dir=clustered, env=single.env, up_args=("--gateway-port", str(free_port()), "--nats-cluster", "3")
    )
    cluster.cli("backup", "restore", str(backup))
    cluster.start()
    try:
        status = cluster.cli("status").stdout
        assert sum(1 for line in status.splitlines() if line.startswith("nats-server-")) == 3, status
        alice = cluster.client()
        await alice.login("alice", PASSWORD)
        page = await alice.history(channel, limit=10)
        assert [m.body for m in page.messages] == ["before the move"]
        await alice.close()
    finally:
        cluster.stop()
