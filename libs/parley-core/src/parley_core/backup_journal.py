"""What `parley backup create` and `parley backup verify` did, one JSON line each in the data
folder's backup journal, so the compliance report can say when the archive was last backed up and
a backup last verified (the backups themselves live wherever the operator keeps them).

Written by the backup tool after each success; read by `parley report compliance`. A line that
does not parse is skipped, never fatal: the journal informs a report, it proves nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

JOURNAL = "backup-journal.jsonl"


@dataclass(frozen=True)
class BackupEntry:
    action: str  # "created" or "verified"
    at: str  # ISO 8601, when the tool finished
    backup: str  # the backup folder as given
    backup_id: str
    backup_created_at: str  # ISO 8601, from the backup's manifest


def record(data_dir: Path, action: str, backup: Path, manifest: dict[str, object]) -> str:
    """Appends the entry; "" when written, else why not (the backup itself stands either way)."""
    entry = {
        "action": action,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "backup": str(backup),
        "backup_id": str(manifest.get("backup_id", "")),
        "backup_created_at": str(manifest.get("created_at", "")),
    }
    try:
        with (data_dir / JOURNAL).open("a") as journal:
            journal.write(json.dumps(entry, sort_keys=True) + "\n")
    except OSError as exc:
        return f"not recorded in {data_dir / JOURNAL}: {exc.strerror}"
    return ""


def read(data_dir: Path) -> list[BackupEntry]:
    try:
        lines = (data_dir / JOURNAL).read_text().splitlines()
    except FileNotFoundError:
        return []
    entries = []
    for line in lines:
        try:
            data = json.loads(line)
            entries.append(
                BackupEntry(
                    action=str(data["action"]),
                    at=str(data["at"]),
                    backup=str(data["backup"]),
                    backup_id=str(data.get("backup_id", "")),
                    backup_created_at=str(data.get("backup_created_at", "")),
                )
            )
        except (ValueError, KeyError, TypeError):
            continue
    return entries
