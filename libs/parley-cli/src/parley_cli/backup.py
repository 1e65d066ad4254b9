"""`parley backup create|verify|restore`: verified backups of the storage archive and the patch registry.

The work is done by the storage package's own tool (``python -m parley_storage.backup_tool``),
since libs never import a service; this module forwards the data folder and arguments, and
turns the tool's JSON answer into one line (or passes it on with --json).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from typing import Any

from parley_cli.arguments import command
from parley_cli.wording import counted

FORWARD_AFTER_S = 2.0


def _events(manifest: dict[str, Any]) -> str:
    counts: dict[str, int] = manifest.get("event_counts", {})
    by_stream = ", ".join(f"{stream} {n}" for stream, n in sorted(counts.items()))
    return counted(sum(counts.values()), "event") + (f" ({by_stream})" if by_stream else "")


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
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        # Ctrl-C ignored until the tool has loaded and handles it itself (backup_tool.main).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    answer = asyncio.ensure_future(process.communicate())
    try:
        out, _ = await asyncio.shield(answer)
    except asyncio.CancelledError:
        # Ctrl-C at a terminal reached the tool too, and it cleans up, says what it left and exits
        # 130 (or had just finished). `kill -INT` of this process alone did not reach it: passed on
        # when the tool is still at work after a moment (a second one during its clean-up would cut
        # that short).
        try:
            out, _ = await asyncio.wait_for(asyncio.shield(answer), FORWARD_AFTER_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            out, _ = await answer
        if process.returncode == 0:
            print(f"backup {args.action} was interrupted as it completed: its work is done and kept", file=sys.stderr)
    code = process.returncode or 0
    if code < 0:  # the signal came before the tool could handle it: it had done nothing yet
        print(f"backup {args.action} interrupted before it began; nothing was done", file=sys.stderr)
        return 130
    if code == 0 and out:
        print(out.decode().rstrip() if args.json else summary(args.action, json.loads(out)))
    return code


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    backup = command(
        sub,
        "backup",
        cmd_backup,
        help="consistent, encrypted, signed backups of the archive (and the patch registry's releases)",
    )
    backup.add_argument("action", choices=("create", "verify", "restore"))
    backup.add_argument(
        "backup",
        help="backup folder (create: a new folder; restore: into an empty --data-dir holding the key backup's "
        "secrets/, then `parley up` there re-seeds the event log and runs the platform)",
    )
    backup.add_argument("--database-url", default="", help="default: $PARLEY_DATABASE_URL or SQLite in the data dir")
    backup.add_argument("--json", action="store_true", help="print the backup's whole manifest as JSON")
