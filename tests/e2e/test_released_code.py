"""The running code is the released code: every instance runs its installed, signed release.

The platform is started from copies of messaging's and parley-core's source folders (on
PYTHONPATH, as an editable install would put them); `parley up` installs each service's base
version as a wheel, with the shared libraries' wheels it carries, into an environment of its own,
starts every instance from there, publishes that very wheel as the signed base release and checks
it through TUF. The copies are then broken (messaging's `__main__` exits at once, its service
module is deleted, parley_core's `__init__` exits) and the messaging instance killed: the instance
the supervisor starts again still serves, from the release and its own parley_core, at the version
the fleet reports, and so does the next `parley up`, which says that the source changed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from parley_core.net import free_port
from parley_testing.platform import RunningPlatform
from parley_testing.waiting import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

REPO_ROOT = Path(__file__).resolve().parents[2]
MESSAGING_SOURCE = REPO_ROOT / "services" / "messaging"
CORE_SOURCE = REPO_ROOT / "libs" / "parley-core"
BASE_VERSION = "0.1.0"


@pytest.fixture
def source_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "source" / "messaging"
    shutil.copytree(MESSAGING_SOURCE, copy, ignore=shutil.ignore_patterns("tests", "*.egg-info", "__pycache__"))
    return copy


@pytest.fixture
def core_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "source" / "parley-core"
    shutil.copytree(CORE_SOURCE, copy, ignore=shutil.ignore_patterns("tests", "*.egg-info", "__pycache__"))
    return copy


@pytest.fixture
def platform(tmp_path: Path, source_copy: Path, core_copy: Path) -> Iterator[RunningPlatform]:
    path = os.pathsep.join(str(folder / "src") for folder in (source_copy, core_copy))
    running = RunningPlatform(
        data_dir=tmp_path / "data",
        env={"PYTHONPATH": path, "PARLEY_HEARTBEAT_SECONDS": "1"},
        up_args=("--gateway-port", str(free_port())),
    )
    yield from running.served()


def _interpreter(pid: int) -> Path:
    return Path(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode())


def _module_file(python: Path, module: str, sources: str) -> Path:
    """Where `python`, run as an instance is run, finds `module`, with the source copies on
    PYTHONPATH as the platform had them."""
    found = subprocess.run(
        [str(python), "-I", "-c", f"import {module}; print({module}.__file__)"],
        env={**os.environ, "PYTHONPATH": sources},
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(found.stdout.strip())


async def _fleet_version(platform: RunningPlatform, instance_id: str) -> str | None:
    out = (await asyncio.to_thread(platform.cli, "fleet", check=False)).stdout
    row = next((line.split() for line in out.splitlines() if instance_id in line and "SERVING" in line), None)
    return row[1] if row else None


def _assert_runs_from(env_dir: Path, pid: int, platform: RunningPlatform, *sources: Path) -> None:
    """The instance's own package and the shared library it runs are the release environment's."""
    assert _interpreter(pid) == env_dir / "bin" / "python"
    for name in ("parley_messaging", "parley_core"):
        module = _module_file(_interpreter(pid), name, platform.env["PYTHONPATH"])
        assert module.is_relative_to(env_dir), module
        for outside in (*sources, REPO_ROOT):
            assert not module.resolve().is_relative_to(outside), module


async def test_instances_run_the_installed_release_and_a_restart_ignores_the_source_tree(
    platform: RunningPlatform, source_copy: Path, core_copy: Path
) -> None:
    env_dir = platform.data_dir / "agent" / "envs" / f"messaging-{BASE_VERSION}"
    messaging = platform.service("messaging")
    pid, instance_id = messaging["pid"], messaging["instances"][0]["instance_id"]  # type: ignore[index]
    assert isinstance(pid, int)
    _assert_runs_from(env_dir, pid, platform, source_copy, core_copy)
    started_with = platform.env["PYTHONPATH"]

    # The wheel it runs is the signed base release, checked through TUF after publishing.
    def checked() -> str | None:
        line = next((x for x in platform.output().splitlines() if "checked through TUF" in x), None)
        return line if line and f"messaging {BASE_VERSION}" in line else None

    async def checked_line() -> str | None:
        return checked()

    told = await eventually(checked_line, "the base releases to be checked through TUF", 120)
    for service in ("auth", "storage", "patch-registry", "gateway"):
        assert f"{service} {BASE_VERSION}" in told, told
    assert "WARNING" not in platform.output()

    package = source_copy / "src" / "parley_messaging"
    (package / "__main__.py").write_text('raise SystemExit("the source tree ran, not the release")\n')
    (package / "service.py").unlink()
    core_init = core_copy / "src" / "parley_core" / "__init__.py"
    kept_init = core_init.read_text()  # `parley up` itself imports parley_core from here on its next start
    core_init.write_text("raise SystemExit(\"the source tree's parley_core ran, not the release's\")\n")
    os.kill(pid, signal.SIGKILL)

    async def restarted() -> int | None:
        again = platform.service("messaging")["pid"]
        return (
            again
            if isinstance(again, int) and again != pid and "messaging is serving again" in platform.output()
            else None
        )

    new_pid = await eventually(restarted, "the supervisor to start messaging again", 120)
    _assert_runs_from(env_dir, new_pid, platform, source_copy, core_copy)
    # The CLI below is a user's, who imports parley_core from their own environment, not the broken copy.
    platform.env["PYTHONPATH"] = str(source_copy / "src")
    assert await eventually(
        lambda: _fleet_version(platform, instance_id), "the restarted instance in the fleet", 60
    ) == (BASE_VERSION)
    await _send(platform, "rita")

    # `make run` again: the data folder's release starts, and `parley up` says the source changed.
    assert platform.stop() == 0
    core_init.write_text(kept_init)
    platform.env["PYTHONPATH"] = started_with
    platform.start()
    assert f"note: {source_copy} changed since messaging {BASE_VERSION} was installed" in platform.output()
    again = platform.service("messaging")["pid"]
    assert isinstance(again, int)
    assert _interpreter(again) == env_dir / "bin" / "python"
    await _send(platform, "ruth")


async def _send(platform: RunningPlatform, user: str) -> None:
    client = platform.client()
    try:
        await client.register(user, "a-long-passphrase")
        await client.login(user, "a-long-passphrase")
        channel = await client.create_channel(f"released-{user}")
        sent = await client.send(channel.channel_id, "still the release")
        assert sent.channel_seq > 0
    finally:
        await client.close()
