"""`make load` against a platform that would refuse its users' registrations stops at once,
with one line saying how to start the platform for load tests, instead of a traceback per user."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from parley_testing.stack import Stack

LOCUSTFILE = Path(__file__).resolve().parents[2] / "loadtests" / "locustfile.py"
LOCUST_TIMEOUT_S = 120.0


async def run_locust(stack: Stack, tmp_path: Path) -> tuple[int, str]:
    ca = tmp_path / "ca.crt"
    ca.write_bytes(stack.pki.ca_pem())
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless"),
        *("--users", "5", "--spawn-rate", "5", "--run-time", "20s", "--only-summary"),
        *("--host", f"127.0.0.1:{stack.ports['gateway']}"),
        env={**os.environ, "PARLEY_CA_CERT": str(ca), "PARLEY_DATA_DIR": str(tmp_path)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), LOCUST_TIMEOUT_S)
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


async def test_load_against_closed_registration_exits_with_one_line(closed_stack: Stack, tmp_path: Path) -> None:
    code, out = await run_locust(closed_stack, tmp_path)
    assert code != 0, out
    assert "Traceback" not in out, out
    assert "start it for load tests with `PARLEY_REGISTRATION=open" in out, out
    assert out.count("does not let load-test users register") == 1, out
    # No user was started, so no request was made or counted.
    assert "Register" not in out, out
