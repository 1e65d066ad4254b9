"""What a person sees while one service is down on a running platform: the CLI says a service is
unavailable and to look at `parley status` (not to start the platform), and `parley up` shows
its front door's warning once per outage, prefixed like its other lines."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from parley_testing.platform import platform_in
from parley_testing.stack import PASSWORD
from parley_testing.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def test_messaging_down_is_said_once_and_pointed_to_status(tmp_path: Path) -> None:
    platform = platform_in(tmp_path)
    platform.start()
    try:
        platform.cli("register", "mia", stdin=f"{PASSWORD}\n{PASSWORD}\n")
        platform.cli("login", "mia", stdin=f"{PASSWORD}\n")
        platform.cli("--as", "mia", "create-channel", "general")
        state = json.loads((platform.data_dir / "platform.json").read_text())
        [messaging] = state["services"]["messaging"]["instances"]
        os.kill(messaging["pid"], signal.SIGTERM)  # drains and exits 0: not restarted
        wait_until(lambda: "messaging stopped" in platform.output(), timeout=60, what="messaging to stop")

        for _ in range(3):  # each a new connection to messaging's front door, which has no instance
            refused = platform.cli("--as", "mia", "join", "general", check=False)
            assert refused.returncode == 1, refused.stderr
            error, hint = refused.stderr.splitlines()
            assert error.endswith("(UNAVAILABLE)")
            assert hint == "a service it needs is unavailable: `parley status` names the one that is down"
        status = platform.cli("status", check=False)
        assert status.returncode == 1
        [row] = [line for line in status.stdout.splitlines() if line.startswith("messaging ")]
        assert not row.endswith("SERVING") or row.endswith("NOT_SERVING"), row

        lines = platform.output().splitlines()
        warned = [line for line in lines if "no live instance for a new connection" in line]
        assert warned == ["[parley] front door messaging: no live instance for a new connection"], warned
        assert all(line.startswith("[parley] ") for line in lines), [x for x in lines if not x.startswith("[")]
    finally:
        platform.kill()
