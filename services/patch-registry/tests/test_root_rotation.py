"""`parley patch root rotate` with offline root key files, against a running registry, followed by ngclient."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from parley.patch.v1 import patch_pb2, patch_pb2_grpc
from tuf.api.metadata import Metadata, Root
from tuf.ngclient import Updater

from parley_testing.stack import TIMEOUT_S, Stack


def parley(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "parley_cli", "--data-dir", str(stack.data_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_root_rotation_from_the_cli_with_offline_keys_is_followed_by_clients(
    stack: Stack, tmp_path: Path
) -> None:
    # The CLI finds the registry and the operator's session where `parley up` and `parley login` put them.
    await stack.create_user("olga", "operator")
    login = await stack.login("olga")
    (stack.data_dir / "platform.json").write_text(
        json.dumps(
            {
                # As `parley up` writes it while it runs (this test's process stands in for it).
                "running": True,
                "pid": os.getpid(),
                "services": {"patch-registry": {"address": f"127.0.0.1:{stack.ports['patch-registry']}"}},
            }
        )
    )
    (stack.data_dir / "cli").mkdir()
    (stack.data_dir / "cli" / "olga.json").write_text(json.dumps({"access_token": login.access_token}))
    # The registry wrote the first root keys for the operator to move offline.
    offline = stack.data_dir / "patch-registry" / "keys" / "offline"
    old_keys = sorted(str(p) for p in offline.glob("root.*.pem"))
    assert len(old_keys) == 3
    new_keys = [str(tmp_path / "usb" / f"new-root-{n}.pem") for n in range(3)]
    rotate = ["--as", "olga", "patch", "root", "rotate", "--threshold", "2"]
    for key in new_keys:
        rotate += ["--new-key", key]

    registry: patch_pb2_grpc.PatchServiceAsyncStub = patch_pb2_grpc.PatchServiceStub(
        stack.internal("patch-registry", identity="platform")
    )
    repo = await registry.TufRepository(patch_pb2.TufRepositoryRequest(), timeout=TIMEOUT_S)
    client_dir = tmp_path / "client"
    (client_dir / "metadata").mkdir(parents=True)
    (client_dir / "metadata" / "root.json").write_bytes(repo.trusted_root)  # what a node ships with

    one_key = await asyncio.to_thread(parley, stack, *rotate, "--old-key", old_keys[0])
    assert one_key.returncode == 1, one_key.stdout
    assert "needs signatures of 2 of the current root keys" in one_key.stderr

    rotated = await asyncio.to_thread(parley, stack, *rotate, "--old-key", old_keys[0], "--old-key", old_keys[1])
    assert rotated.returncode == 0, rotated.stderr
    assert "root v2: 2 of 3 keys" in rotated.stdout
    for key in new_keys:
        assert Path(key).stat().st_mode & 0o777 == 0o600

    def refresh() -> Root:
        updater = Updater(
            metadata_dir=str(client_dir / "metadata"),
            metadata_base_url=repo.metadata_url,
            target_dir=str(client_dir),
            target_base_url=repo.targets_url,
            bootstrap=None,
        )
        updater.refresh()
        return Metadata[Root].from_file(str(client_dir / "metadata" / "root.json")).signed

    root = await asyncio.to_thread(refresh)
    assert root.version == 2
    listed = [line.strip() for line in rotated.stdout.splitlines() if line.startswith("  ")]
    assert set(root.roles["root"].keyids) == set(listed)
    assert root.roles["root"].threshold == 2
    first_root = Metadata[Root].from_bytes(repo.trusted_root).signed
    assert not set(root.roles["root"].keyids) & set(first_root.roles["root"].keyids)

    # The old keys alone cannot rotate again: the next root needs the new ones.
    stale = ["--threshold", "1", "--old-key", old_keys[0], "--old-key", old_keys[1], "--new-key", str(tmp_path / "x")]
    again = await asyncio.to_thread(parley, stack, "--as", "olga", "patch", "root", "rotate", *stale)
    assert again.returncode == 1
    assert "of the current root keys" in again.stderr
