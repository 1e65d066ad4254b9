"""A Parley program run as a person or an operator runs it from a shell, its output captured."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["run_module", "stop_process"]


def run_module(
    module: str, *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`python -m module args` to its end, with `env` added to this process's environment; a
    failure is the test's to judge (its exit code and stderr are returned, not raised)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env={**os.environ, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def stop_process(process: subprocess.Popen[Any], sig: signal.Signals, *, timeout: float) -> int:
    """Asks a running process to stop with `sig`, and kills it if it has not exited within
    `timeout` seconds; its exit code."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
