"""A data folder restored from a backup holds the archive but not yet the JetStream event log.

Accounts, channels, sessions and the audit chain are rebuilt by replaying the event log, which
a backup does not hold: the archive holds every event of it. Restore therefore marks the folder,
and `parley up` re-seeds the log from the archive before any service starts (reseed.py), then
removes the mark. Storage refuses to start on a marked folder: on empty streams, whose sequence
numbers start again at 1, it would take every new event for a redelivery of the archived one
with the same number and drop it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from parley_core.config import RESTORED_MARKER
from parley_core.files import ensure_private_dir, write_private_file

WHAT_A_RESTORE_HOLDS = (
    "this folder holds a restored archive whose event log is not re-seeded yet: start the platform on it "
    "with `parley --data-dir {data_dir} up` (or `make run DATA_DIR={data_dir}`), which first puts every "
    "archived event back into the log, then starts the services"
)


class RestoredArchiveOnly(Exception):
    """The data folder was restored from a backup and its event log is not re-seeded yet."""


@dataclass(frozen=True)
class RestoreMarker:
    backup_id: str
    backup_created_at: str
    database: str  # where the archive was restored (a URL without password); "": the folder's SQLite
    # How many events the restore put in the archive; written before the restore commits, so a
    # restore cut short after the mark (kill -9) is told apart from a finished one. 0: not recorded.
    events: int = 0


def marker_path(data_dir: Path) -> Path:
    return data_dir / RESTORED_MARKER


def what_a_restore_holds(data_dir: Path) -> str:
    return WHAT_A_RESTORE_HOLDS.format(data_dir=data_dir)


def mark_restored(
    data_dir: Path, backup_id: str, backup_created_at: str = "", database: str = "", events: int = 0
) -> None:
    body = {
        "backup_id": backup_id,
        "backup_created_at": backup_created_at,
        "database": database,
        "events": events,
        "restored_at": datetime.now(UTC).isoformat(),
        "note": what_a_restore_holds(data_dir),
    }
    path = marker_path(data_dir)
    ensure_private_dir(path.parent)  # with PostgreSQL nothing else lives there
    write_private_file(path, json.dumps(body, indent=1).encode())


def read_restored(data_dir: Path) -> RestoreMarker | None:
    """The backup the folder was restored from, while its event log still needs re-seeding."""
    path = marker_path(data_dir)
    if not path.exists():
        return None
    body = json.loads(path.read_text())
    return RestoreMarker(
        backup_id=body["backup_id"],
        backup_created_at=body.get("backup_created_at", ""),
        database=body.get("database", ""),
        events=int(body.get("events", 0)),
    )


def clear_restored(data_dir: Path) -> None:
    marker_path(data_dir).unlink(missing_ok=True)


def refuse_restored(data_dir: Path) -> None:
    """Raise when storage is about to start on a restored folder whose log is not re-seeded."""
    if marker_path(data_dir).exists():
        raise RestoredArchiveOnly(f"{data_dir}: {what_a_restore_holds(data_dir)}")
