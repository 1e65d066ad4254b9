"""A Parley program run as a person or an operator runs it from a shell, its output captured."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["run_module"]


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
