"""`parley backup create|verify|restore`: verified backups of the storage archive and the patch registry.

The work is done by the storage package's own tool (``python -m parley_storage.backup_tool``),
since libs never import a service; this module only forwards the data folder and arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import sys


async def cmd_backup(args: argparse.Namespace) -> int:
    command = [sys.executable, "-m", "parley_storage.backup_tool", args.action, str(args.backup)]
    command += ["--data-dir", str(args.data_dir)]
    if args.database_url:
        command += ["--database-url", args.database_url]
    process = await asyncio.create_subprocess_exec(*command)
    try:
        return await process.wait()
    except asyncio.CancelledError:  # Ctrl-C reached the tool too: it cleans up, says what it left, exits 130
        return await process.wait()


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    backup = sub.add_parser(
        "backup", help="consistent, encrypted, signed backups of the archive (and the patch registry's releases)"
    )
    backup.add_argument("action", choices=("create", "verify", "restore"))
    backup.add_argument(
        "backup",
        help="backup folder (create: a new folder; restore: into an empty --data-dir holding the key backup's "
        "secrets/, then `parley up` there re-seeds the event log and runs the platform)",
    )
    backup.add_argument("--database-url", default="", help="default: $PARLEY_DATABASE_URL or SQLite in the data dir")
    backup.set_defaults(run=cmd_backup)
