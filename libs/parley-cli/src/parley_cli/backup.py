"""`parley backup create|verify|restore`: verified backups of the storage archive and the patch registry.

The work is done by the storage package's own tool (``python -m parley_storage.backup_tool``),
since libs never import a service; this module forwards the data folder and arguments, and
turns the tool's JSON answer into one line (or passes it on with --json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any


def _events(manifest: dict[str, Any]) -> str:
    counts: dict[str, int] = manifest.get("event_counts", {})
    by_stream = ", ".join(f"{stream} {n}" for stream, n in sorted(counts.items()))
    return f"{sum(counts.values())} events" + (f" ({by_stream})" if by_stream else "")


def _registry(manifest: dict[str, Any]) -> str:
    files = manifest.get("registry_files") or 0
    return f", the patch registry ({files} files)" if files else ""


def summary(action: str, answer: dict[str, Any]) -> str:
    """One line of what the tool did, from its JSON answer (the manifest, and where)."""
    backup = f"backup {answer['backup_id']} of {answer['created_at']}"
    if action == "create":
        point = "" if answer.get("stream_point") else "; the platform was not running: the archive as it was"
        return (
            f"{backup} created in {answer['created']}: {_events(answer)}{_registry(answer)}, encrypted and signed"
            f"{point}; check it with `parley backup verify {answer['created']}`"
        )
    if action == "verify":
        return f"{backup} in {answer['verified']} verified: signature valid, every file matches, {_events(answer)}"
    return f"{backup} restored from {answer['restored']}: {_events(answer)}{_registry(answer)}"


async def cmd_backup(args: argparse.Namespace) -> int:
    command = [sys.executable, "-m", "parley_storage.backup_tool", args.action, str(args.backup)]
    command += ["--data-dir", str(args.data_dir)]
    if args.database_url:
        command += ["--database-url", args.database_url]
    process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    try:
        out, _ = await process.communicate()
    except asyncio.CancelledError:  # Ctrl-C reached the tool too: it cleans up, says what it left, exits 130
        return await process.wait()
    if process.returncode == 0 and out:
        print(out.decode().rstrip() if args.json else summary(args.action, json.loads(out)))
    return process.returncode or 0


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
    backup.add_argument("--json", action="store_true", help="print the backup's whole manifest as JSON")
    backup.set_defaults(run=cmd_backup)
