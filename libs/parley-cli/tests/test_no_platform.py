"""What the CLI says when its data folder holds no platform: how to start one in that folder,
or, for a folder that is not there at all, that --data-dir may be wrong. The CLI runs as the
user runs it, a process of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from parley_core.net import free_port
from parley_core.pki import Pki

# Commands that reach the platform by each way the CLI finds it: the gateway (client.json), the
# operator's storage and auth connections (platform.json), the patch registry's.
COMMANDS = [
    ("channels",),
    ("retention",),
    ("admin", "show", "alice"),
    ("fleet",),
    ("status",),
    ("report", "compliance"),
]


def run_parley(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("PARLEY_DATA_DIR", "PARLEY_PASSWORD")} | env
    return subprocess.run(
        [sys.executable, "-m", "parley_cli", *args],
        capture_output=True,
        text=True,
        env=environ,
        cwd=cwd,
        check=False,
        stdin=subprocess.DEVNULL,  # nothing piped: a command that asks for a password gets none
    )


def parley(*args: str, cwd: Path, **env: str) -> str:
    """The one line a refused command prints on stderr (no traceback, nothing on stdout)."""
    result = run_parley(*args, cwd=cwd, **env)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    return line


@pytest.mark.parametrize("command", COMMANDS)
def test_a_folder_that_is_not_there_is_named(tmp_path: Path, command: tuple[str, ...]) -> None:
    nowhere = tmp_path / "no-such-folder"

    line = parley("--data-dir", str(nowhere), *command, cwd=tmp_path)

    assert line == f"error: no folder {nowhere}: is --data-dir (or $PARLEY_DATA_DIR) right?"
    assert not nowhere.exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_the_hint_starts_the_platform_in_the_folder_named(tmp_path: Path, command: tuple[str, ...]) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    line = parley("--data-dir", str(elsewhere), *command, cwd=tmp_path)

    assert line == (
        f"error: no platform state in {elsewhere}; start the platform with `parley --data-dir {elsewhere} up` "
        f"(or `make run DATA_DIR={elsewhere}`) first"
    )


def test_the_default_folder_is_started_with_make_run(tmp_path: Path) -> None:
    """./.parley before the first `make run`: nothing is mistyped, the platform is not started yet."""
    line = parley("channels", cwd=tmp_path, XDG_CONFIG_HOME=str(tmp_path / "config"))

    # The folder it looked in, in full, and the ways to name another (issue 20.4).
    assert line.startswith(f"error: no platform state in {tmp_path / '.parley'}; start the platform with `make run`")
    assert "--data-dir DIR or $PARLEY_DATA_DIR" in line
    assert "the folder `parley up` last started" in line


@pytest.mark.parametrize("command", COMMANDS)
def test_a_platform_that_ran_here_and_stopped_is_said_to_be_stopped(tmp_path: Path, command: tuple[str, ...]) -> None:
    """After Ctrl-C on `make run` the folder keeps its data and the last run's platform.json
    (`running: false`) but no client.json: not "no platform state", which reads as data lost."""
    data = tmp_path / ".parley"
    data.mkdir()
    door = {"port": 1, "address": "127.0.0.1:1", "pid": 0, "version": "0.1.0", "instances": []}
    services = dict.fromkeys(("auth", "messaging", "storage", "patch-registry", "gateway"), door)
    (data / "platform.json").write_text(json.dumps({"running": False, "pid": 0, "services": services}))

    line = parley(*command, cwd=tmp_path, XDG_CONFIG_HOME=str(tmp_path / "config"))

    assert line == "error: the platform in .parley is not running; start it with `make run`"


def test_outside_the_repository_the_folder_parley_up_started_is_used(tmp_path: Path) -> None:
    """`parley up` notes its data folder in the user's config folder; from a folder without
    ./.parley the CLI uses that one."""
    started = tmp_path / "repo" / ".parley"
    started.mkdir(parents=True)
    config = tmp_path / "config"
    (config / "parley").mkdir(parents=True)
    (config / "parley" / "data-dir").write_text(f"{started}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    line = parley("channels", cwd=elsewhere, XDG_CONFIG_HOME=str(config))

    assert line.startswith(f"error: no platform state in {started};")
    # $PARLEY_DATA_DIR still wins over the remembered folder.
    other = tmp_path / "other"
    assert parley("channels", cwd=elsewhere, XDG_CONFIG_HOME=str(config), PARLEY_DATA_DIR=str(other)) == (
        f"error: no folder {other}: is --data-dir (or $PARLEY_DATA_DIR) right?"
    )


def test_a_remembered_folder_that_was_deleted_is_named_and_ignored(tmp_path: Path) -> None:
    """The note of `parley up` outlives a deleted data folder: the CLI says so, not only that
    ./.parley has nothing."""
    config = tmp_path / "config"
    (config / "parley").mkdir(parents=True)
    deleted = tmp_path / "old-checkout" / ".parley"
    (config / "parley" / "data-dir").write_text(f"{deleted}\n")

    line = parley("channels", cwd=tmp_path, XDG_CONFIG_HOME=str(config))

    assert line.startswith(
        f"error: no platform state in {tmp_path / '.parley'}; the folder `parley up` last started, {deleted}, "
        "no longer exists; start the platform with `make run`"
    )
    assert not deleted.exists()


def test_a_gateway_that_does_not_answer_names_how_to_start_this_folder(pki: Pki, tmp_path: Path) -> None:
    """client.json is left from an earlier run, but nothing listens on its gateway's port now."""
    data_dir = tmp_path / "stopped"
    data_dir.mkdir()
    client = {"gateway_address": f"127.0.0.1:{free_port()}", "ca_cert": str(pki.ca_cert)}
    (data_dir / "client.json").write_text(json.dumps(client))

    result = run_parley(
        "--data-dir", str(data_dir), "register", "bob", cwd=tmp_path, PARLEY_PASSWORD="a-long-enough-passphrase"
    )

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    error, hint = result.stderr.splitlines()
    assert error.endswith("(UNAVAILABLE)")
    assert hint == (
        f"is the platform running? `parley --data-dir {data_dir} up` (or `make run DATA_DIR={data_dir}`) starts it; "
        "`parley status` shows what is down"
    )


def test_admin_commands_refuse_as_a_user_before_reaching_anything(tmp_path: Path) -> None:
    """They act as the platform identity: taking --as silently would let the operator believe otherwise."""
    nowhere = str(tmp_path / "no-such-folder")
    result = run_parley("--data-dir", nowhere, "--as", "bob", "admin", "show", "x", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "--as bob: `parley admin` commands act as the platform identity" in result.stderr
    assert "run them without --as" in result.stderr


def test_patch_status_without_an_id_says_where_the_ids_are(tmp_path: Path) -> None:
    result = run_parley("--data-dir", str(tmp_path), "patch", "status", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "`parley patch list` lists the roll-outs with their ids" in result.stderr


def test_a_service_down_on_a_running_platform_points_to_status_not_to_a_start(pki: Pki, tmp_path: Path) -> None:
    """The platform runs (its `parley up` is alive: this test's process stands in for it) but the
    gateway does not answer: starting the platform would be wrong advice."""
    data_dir = tmp_path / "running"
    data_dir.mkdir()
    (data_dir / "platform.json").write_text(json.dumps({"running": True, "pid": os.getpid(), "services": {}}))
    client = {"gateway_address": f"127.0.0.1:{free_port()}", "ca_cert": str(pki.ca_cert)}
    (data_dir / "client.json").write_text(json.dumps(client))

    result = run_parley(
        "--data-dir", str(data_dir), "register", "bob", cwd=tmp_path, PARLEY_PASSWORD="a-long-enough-passphrase"
    )

    assert result.returncode == 1, result.stderr
    error, hint = result.stderr.splitlines()
    assert error.endswith("(UNAVAILABLE)")
    assert hint == "a service it needs is unavailable: `parley status` names the one that is down"


def test_the_gateway_option_is_dialled_without_a_client_file(pki: Pki, tmp_path: Path) -> None:
    """A folder with the platform's CA certificate but no gateway of its own: --gateway names one."""
    data_dir = tmp_path / "no-gateway"
    (data_dir / "pki").mkdir(parents=True)
    (data_dir / "pki" / "ca.crt").write_bytes(pki.ca_cert.read_bytes())
    nobody = f"127.0.0.1:{free_port()}"

    result = run_parley(
        "--data-dir",
        str(data_dir),
        "--gateway",
        nobody,
        "login",
        "bob",
        cwd=tmp_path,
        PARLEY_PASSWORD="a-long-enough-passphrase",
    )

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    error, hint = result.stderr.splitlines()
    assert error.endswith("(UNAVAILABLE)")  # it dialled the gateway named, not refused
    # The address given is what does not answer: `parley status` knows nothing of it.
    assert hint == f"is --gateway {nobody} right? that address is not answering"


@pytest.mark.parametrize("command", [("admin", "create-user", "carol"), ("erase", "carol")])
def test_an_operator_command_on_a_joined_hosts_folder_says_so_before_asking_anything(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    """Not "no password given" or "add --yes": neither would do there."""
    joined = tmp_path / "host-b"
    joined.mkdir()
    (joined / "fleet.json").write_text(json.dumps({"host": "host-b", "registry_address": "127.0.0.1:1"}))

    line = parley("--data-dir", str(joined), *command, cwd=tmp_path)

    assert line.startswith(f"error: {joined} is the folder of joined host host-b of the fleet")
    assert line.endswith("run it with --data-dir naming the first host's folder")
