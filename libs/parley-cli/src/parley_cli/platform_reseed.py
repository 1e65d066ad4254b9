"""A data folder restored from a backup (`parley backup restore`): its archive goes back into
the event log before any service starts, by storage's own tool as the platform identity (it
resumes where it stopped if interrupted)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path


async def reseed_restored_log(
    data_dir: Path, *, nats_url: str, database_url: str, say: Callable[[str], None], stopping: asyncio.Event
) -> None:
    say("restored from a backup: putting the archive's events back into the event log first")
    tool = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "parley_storage.reseed",
        "--data-dir",
        str(data_dir),
        "--nats-url",
        nats_url,
        *(["--database-url", database_url] if database_url else []),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert tool.stdout is not None
    assert tool.stderr is not None
    errors = asyncio.create_task(tool.stderr.read())
    async for raw in tool.stdout:
        line = raw.decode().strip()
        if line and not line.startswith("{"):  # the closing JSON summary is for scripts
            say(f"  {line}")
    problem = (await errors).decode().strip()
    failed = await tool.wait() != 0
    if stopping.is_set():
        raise RuntimeError("stopped while putting the archive back into the event log; the next start resumes it")
    if failed:
        raise RuntimeError(problem.splitlines()[-1] if problem else "re-seeding the event log failed")
    say("event log re-seeded from the archive; starting the services")
