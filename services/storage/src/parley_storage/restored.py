"""A data folder restored from a backup holds the archive but not the JetStream event log.

Accounts, channels, sessions and the audit signing keys live in the event log, which no backup
holds yet. Storage started on such a folder would face empty streams whose sequence numbers
restart at 1, and it would skip every new event as a redelivery of the archived one with the
same number. Restore therefore marks the folder, and storage refuses to start on it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from parley_core.files import ensure_private_dir, write_private_file

MARKER = "restored-archive-only.json"
WHAT_A_RESTORE_HOLDS = (
    "this folder holds a restored storage archive only: accounts, channels and the audit signing keys "
    "live in the JetStream event log, which backups do not hold yet, so a platform cannot run on it "
    "(see README, 'Backups')"
)


class RestoredArchiveOnly(Exception):
    """The data folder was restored from a backup and has no event log to run with."""


def marker_path(data_dir: Path) -> Path:
    return data_dir / "storage" / MARKER


def mark_restored(data_dir: Path, backup_id: str) -> None:
    body = {"backup_id": backup_id, "restored_at": datetime.now(UTC).isoformat(), "note": WHAT_A_RESTORE_HOLDS}
    path = marker_path(data_dir)
    ensure_private_dir(path.parent)  # with PostgreSQL nothing else lives there
    write_private_file(path, json.dumps(body, indent=1).encode())


def refuse_restored(data_dir: Path) -> None:
    """Raise when storage is about to start on a restored folder."""
    if marker_path(data_dir).exists():
        raise RestoredArchiveOnly(f"{data_dir}: {WHAT_A_RESTORE_HOLDS}")
