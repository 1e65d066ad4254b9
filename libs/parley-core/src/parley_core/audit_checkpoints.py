"""Where the operator's checkpoints of the audit chain are kept: the folder
`parley audit checkpoint` writes to and storage's audit monitor compares the archive with (its
newest shows on the console's Audit page and in the compliance report).

$PARLEY_STORAGE_AUDIT_CHECKPOINT_DIR names one (a folder outside the data folder, read-only to
storage, is the stronger place); without it, <data>/audit-checkpoints/, so that `make run` and
`parley up` show a checkpoint with no setting at all.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

CHECKPOINT_DIR_ENV = "PARLEY_STORAGE_AUDIT_CHECKPOINT_DIR"
DEFAULT_CHECKPOINT_DIR = "audit-checkpoints"


def checkpoint_folder(data_dir: Path, configured: str | None = None) -> Path:
    """`configured` (storage's setting), else $PARLEY_STORAGE_AUDIT_CHECKPOINT_DIR, else <data>/audit-checkpoints."""
    folder = os.environ.get(CHECKPOINT_DIR_ENV, "") if configured is None else configured
    return Path(folder) if folder else data_dir / DEFAULT_CHECKPOINT_DIR


def checkpoint_file_name(at: datetime) -> str:
    """A new checkpoint's file name: its time, so the folder lists them in order."""
    return f"checkpoint-{at.strftime('%Y-%m-%dT%H%M%S.%fZ')}.json"
