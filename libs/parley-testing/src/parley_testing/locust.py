"""A short headless Locust run (`make load`'s users) against a test stack's gateway, as a process."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from parley_testing.stack import Stack

TIMEOUT_S = 120.0


async def short_locust_run(stack: Stack, folder: Path, *, locustfile: Path, run_time: str) -> tuple[int, str]:
    """Five users for `run_time` (e.g. "8s"); Locust's exit code and everything it printed."""
    ca = folder / "ca.crt"
    ca.write_bytes(stack.pki.ca_pem())
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "locust", "-f", str(locustfile), "--headless"),
        *("--users", "5", "--spawn-rate", "5", "--run-time", run_time, "--only-summary"),
        *("--host", f"127.0.0.1:{stack.ports['gateway']}"),
        env={**os.environ, "PARLEY_CA_CERT": str(ca), "PARLEY_DATA_DIR": str(folder)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), TIMEOUT_S)
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")
