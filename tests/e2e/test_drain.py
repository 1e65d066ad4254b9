"""SIGTERM to one service: it drains, says so in its log, and the platform reports it unhealthy."""

from __future__ import annotations

import os
import signal

import pytest

from parley_testing.platform import RunningPlatform
from parley_testing.waiting import wait_until

pytestmark = pytest.mark.e2e


def test_sigterm_drains_one_service_and_platform_reports_it(platform: RunningPlatform) -> None:
    assert platform.cli("status").returncode == 0
    pid = platform.service("messaging")["pid"]
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGTERM)

    wait_until(lambda: "drained; exiting" in platform.log("messaging"), timeout=30, what="messaging to drain")
    log = platform.log("messaging")
    assert log.index('"msg": "draining"') < log.index("drained; exiting")
    wait_until(
        lambda: "UNHEALTHY: messaging stopped (exit 0)" in platform.output(),
        timeout=30,
        what="`parley up` to report messaging down",
    )
    status = platform.cli("status", check=False)
    assert status.returncode == 1
    assert "messaging" in status.stdout
    assert "UNREACHABLE" in status.stdout
    assert "platform: UNHEALTHY" in status.stdout
    # The other services keep serving.
    assert "gateway         127.0.0.1" in status.stdout
    assert platform.stop() == 0
    # Once stopped, operator commands say so instead of dialling dead ports.
    for command in ("status", "parked"):
        after = platform.cli(command, check=False)
        assert after.returncode == 2
        assert "not running" in after.stderr
        # A bare `make run` would start ./.parley, not this folder.
        assert f"start it with `parley --data-dir {platform.data_dir} up`" in after.stderr


def test_data_folder_is_private(platform: RunningPlatform) -> None:
    data = platform.data_dir
    for folder in (data, data / "pki", data / "secrets", data / "nats"):
        assert folder.stat().st_mode & 0o777 == 0o700, folder
    for secret in (
        data / "pki" / "ca.key",
        data / "pki" / "gateway.key",
        data / "secrets" / "nats-passwords.json",
        data / "secrets" / "auth-signing-key.pem",
    ):
        assert secret.stat().st_mode & 0o777 == 0o600, secret
