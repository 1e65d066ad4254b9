"""A restored data folder: restore names the secrets it needs, storage refuses to run on the result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from parley_storage.restored import mark_restored

EX_CONFIG = 78


def run_module(module: str, *args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PARLEY_DATA_DIR": str(data_dir)},
        timeout=120,
        check=False,
    )


def test_restore_names_exactly_the_secrets_it_needs(tmp_path: Path) -> None:
    data_dir = tmp_path / "empty"
    (data_dir / "secrets").mkdir(parents=True)
    (data_dir / "secrets" / "storage-kek.json").write_text("{}")

    backup = str(tmp_path / "backup")
    result = run_module("parley_storage.backup_tool", "restore", backup, "--data-dir", str(data_dir), data_dir=data_dir)

    assert result.returncode == 1
    assert "lacks storage-backup.key, storage-backup-signing.pub:" in result.stderr
    assert "copy storage-kek.json, storage-backup.key, storage-backup-signing.pub from your key backup" in result.stderr
    assert not (data_dir / "storage" / "archive.db").exists()


def test_storage_refuses_to_start_on_a_restored_folder(tmp_path: Path) -> None:
    data_dir = tmp_path / "restored"
    mark_restored(data_dir, "b1")

    result = run_module("parley_storage", data_dir=data_dir)

    assert result.returncode == EX_CONFIG
    [refusal] = result.stderr.splitlines()  # one line, the service log's JSON record
    assert json.loads(refusal)["level"] == "error"
    assert "refusing to start" in result.stderr
    assert "event log is not re-seeded yet" in result.stderr
    assert "up`" in result.stderr  # says what to run
    assert "Traceback" not in result.stderr
