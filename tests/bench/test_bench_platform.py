"""What the bench's `parley up` runs with (parley_bench.platform_proc.BenchPlatform)."""

from __future__ import annotations

from pathlib import Path

import pytest
from parley_bench.platform_proc import BenchPlatform


def test_a_bench_platform_remembers_its_folder_in_a_config_folder_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`parley up` writes the folder it started to $XDG_CONFIG_HOME/parley/data-dir for the CLI;
    a bench platform lives in a temporary folder, so it must not replace the user's."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "users-config"))
    platform = BenchPlatform(tmp_path / "bench" / "data", env={"PARLEY_GATEWAY_SOURCE_RATE": "5"})

    env = platform.environment()

    assert env["XDG_CONFIG_HOME"] == str(tmp_path / "bench" / "config")
    assert env["PARLEY_GATEWAY_SOURCE_RATE"] == "5"  # the phase's own settings still reach it
