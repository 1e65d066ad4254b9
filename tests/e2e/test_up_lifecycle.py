"""`parley up` owns its data folder and stops everything it started, even when its output is gone.

Ctrl-C on `make run | tee out` kills the reader of `parley up`'s output together with it; the
platform must still stop every process, and a second `parley up` on a running folder must be
refused instead of starting a second nats-server on the same store.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from parley_core.net import free_port
from parley_core.platform_state import READY_LINE
from parley_testing.platform import START_TIMEOUT_S, STOP_TIMEOUT_S, TEST_DEFAULTS, RunningPlatform
from parley_testing.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

HINT = "admin create-user"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _started_pids(data_dir: Path) -> list[int]:
    state = json.loads((data_dir / "platform.json").read_text())
    pids = list(state["nats_pids"])
    for service in state["services"].values():
        pids += [instance["pid"] for instance in service["instances"]]
    return pids


def parley(data_dir: Path, *args: str, stdout: int = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    """The `parley` command as a user runs it on ``data_dir``; the test looks at the exit code."""
    return subprocess.run(
        [sys.executable, "-m", "parley_cli", "--data-dir", str(data_dir), *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **TEST_DEFAULTS},
        timeout=STOP_TIMEOUT_S,
        check=False,
    )


def _closed_pipe() -> int:
    """The write end of a pipe nobody reads any more, as `| head` leaves it."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    return write_end


def test_ctrl_c_with_output_pipe_gone_stops_everything_and_folder_is_locked(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {**os.environ, **TEST_DEFAULTS}
    up = subprocess.Popen(
        [sys.executable, "-m", "parley_cli", "--data-dir", str(data_dir), "up", "--gateway-port", str(free_port())],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    assert up.stdout is not None
    banner: list[str] = []
    try:
        while READY_LINE not in "".join(banner):
            line = up.stdout.readline().decode(errors="replace")
            assert line, f"`parley up` exited before it was ready:\n{''.join(banner)}"
            banner.append(line)
        # The rest of the banner comes right after the ready line.
        while "Ctrl-C" not in banner[-1]:
            banner.append(up.stdout.readline().decode(errors="replace"))
        assert HINT in "".join(banner), "a new folder's first start names how to create the first account"

        second = parley(data_dir, "up", "--gateway-port", str(free_port()))
        assert second.returncode != 0
        assert f"already running on {data_dir}" in second.stderr
        assert f"pid {up.pid}" in second.stderr

        # Piped into a reader that left (`parley status | head -0`): no traceback, quiet exit.
        status = parley(data_dir, "status", stdout=_closed_pipe())
        assert "Traceback" not in status.stderr
        assert status.returncode == 141

        pids = _started_pids(data_dir)
        assert len(pids) == 6, pids  # nats-server and five services
        assert all(_alive(pid) for pid in pids)
    finally:
        # The reader leaves with Ctrl-C, as `tee` does: every line `parley up` says from now on fails.
        up.stdout.close()
        os.killpg(up.pid, signal.SIGINT)
        up.wait(timeout=STOP_TIMEOUT_S)

    assert up.returncode == 0
    wait_until(
        lambda: not any(_alive(pid) for pid in pids), timeout=STOP_TIMEOUT_S, what="every started process to exit"
    )
    assert json.loads((data_dir / "platform.json").read_text())["running"] is False
    doors = _service_ports(data_dir)

    # The folder is free again; a later start has accounts to log in to, so no first-account hint.
    again = RunningPlatform(data_dir=data_dir, up_args=("--gateway-port", str(free_port())))
    again.start()
    try:
        # Every service's front door where it was (joined hosts' bundles name them).
        assert _service_ports(data_dir) == doors
        wait_until(lambda: "Ctrl-C" in again.output(), timeout=START_TIMEOUT_S, what="the whole banner")
        assert "login" in again.output()
        assert HINT not in again.output()
        assert "create-channel" not in again.output()  # its #general exists: a second would be ambiguous
    finally:
        assert again.stop() == 0


def _service_ports(data_dir: Path) -> dict[str, int]:
    """The front doors' ports but the gateway's (its port is asked for on each start here)."""
    services = json.loads((data_dir / "platform.json").read_text())["services"]
    return {name: int(s["port"]) for name, s in services.items() if name != "gateway"}


def test_processes_left_by_a_killed_parley_up_are_reported_and_block_a_new_start(tmp_path: Path) -> None:
    """`parley up` killed with -9 leaves its services running (own sessions) and a "running" state."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    survivor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        state = {
            "running": True,
            "pid": gone.pid,
            "nats_pids": [],
            "services": {
                "auth": {"address": f"127.0.0.1:{free_port()}", "instances": [{"pid": survivor.pid}]},
            },
        }
        (data_dir / "platform.json").write_text(json.dumps(state))

        status = parley(data_dir, "status")
        assert "not running" not in status.stderr
        assert f"still running: pids {survivor.pid}" in status.stderr
        assert "auth" in status.stdout  # its health is still checked

        up = parley(data_dir, "up", "--gateway-port", str(free_port()))
        assert up.returncode != 0
        assert f"pids {survivor.pid} still run" in up.stderr
        assert not (data_dir / "nats").exists(), "nothing was started"
    finally:
        survivor.kill()
        survivor.wait()


def test_status_after_parley_up_was_killed_checks_each_service_where_it_still_answers(tmp_path: Path) -> None:
    """The front addresses are `parley up`'s own and die with it; the instances live on, each on
    its own address, and status checks them there and says why clients cannot connect."""
    platform = RunningPlatform(data_dir=tmp_path / "data", up_args=("--gateway-port", str(free_port())))
    platform.start()
    assert platform.process is not None
    state = platform.state
    pids = [int(pid) for pid in state["nats_pids"]]  # type: ignore[attr-defined]
    pids += [i["pid"] for s in state["services"].values() for i in s["instances"]]  # type: ignore[attr-defined]
    try:
        platform.process.kill()  # -9: nothing is stopped
        platform.process.wait()
        status = parley(platform.data_dir, "status")
        assert status.returncode == 1
        assert "exited without stopping" in status.stderr
        instances = {i["address"] for s in state["services"].values() for i in s["instances"]}  # type: ignore[attr-defined]
        serving = {line.split()[1] for line in status.stdout.splitlines() if line.endswith("SERVING")}
        brokers = {n["url"].removeprefix("tls://") for n in state["nats"]}  # type: ignore[attr-defined]
        assert serving == instances | brokers  # every service answered where it runs, and nats-server too
        gateway = state["services"]["gateway"]["address"]  # type: ignore[index]
        assert f"`parley up` is gone and with it the addresses clients use (the gateway's {gateway})" in status.stdout
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not any(_alive(pid) for pid in pids), timeout=STOP_TIMEOUT_S, what="the leftovers gone")


def test_a_service_that_refuses_to_start_is_one_line_of_parley_up(tmp_path: Path) -> None:
    """Storage on an archive that is not new, without its backup key: `parley up` says why in
    the service's own words, once, not as a screen of JSON log records."""
    platform = RunningPlatform(data_dir=tmp_path / "data", up_args=("--gateway-port", str(free_port())))
    platform.start()
    assert platform.stop() == 0
    (platform.data_dir / "secrets" / "storage-backup.key").unlink()

    up = subprocess.run(
        [sys.executable, "-m", "parley_cli", "--data-dir", str(platform.data_dir), "up", *platform.up_args],
        capture_output=True,
        text=True,
        env={**os.environ, **TEST_DEFAULTS},
        timeout=START_TIMEOUT_S,
        check=False,
    )

    said = up.stdout + up.stderr
    assert up.returncode != 0
    assert said.count("storage-backup.key is missing, yet this archive is not new") == 1, said
    assert '{"ts"' not in said  # no log records
    assert not (platform.data_dir / "secrets" / "storage-backup.key").exists()  # not made again


def test_a_parley_up_killed_before_its_services_are_up_leaves_nats_server_found(tmp_path: Path) -> None:
    """Killed with -9 while it starts (a long re-seed of a restored folder is such a moment): the
    nats-server it started is in the state file already, so the next start refuses and names it."""
    data_dir = tmp_path / "data"
    up = subprocess.Popen(
        [sys.executable, "-m", "parley_cli", "--data-dir", str(data_dir), "up", "--gateway-port", str(free_port())],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, **TEST_DEFAULTS},
        start_new_session=True,
    )
    try:
        assert up.stdout is not None
        first = up.stdout.readline().decode()
        assert "nats-server with JetStream" in first, first
        os.kill(up.pid, signal.SIGKILL)
        up.wait(timeout=STOP_TIMEOUT_S)
        nats_pids = json.loads((data_dir / "platform.json").read_text())["nats_pids"]
        assert nats_pids
        assert all(_alive(pid) for pid in nats_pids)

        again = parley(data_dir, "up", "--gateway-port", str(free_port()))
        assert again.returncode != 0
        assert f"pids {' '.join(map(str, nats_pids))}" in again.stderr
    finally:
        # What the killed `parley up` left: its nats-server and any service it had begun to start.
        leftovers = subprocess.run(["pgrep", "-f", str(data_dir)], capture_output=True, text=True, check=False)
        for pid in map(int, leftovers.stdout.split()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
