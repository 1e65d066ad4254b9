"""The running code is the released code: every instance runs its installed, signed release.

The platform is started from a copy of messaging's source folder (on PYTHONPATH, as an editable
install would put it); `parley up` installs each service's base version as a wheel into an
environment of its own, starts every instance from there, publishes that very wheel as the
signed base release and checks it through TUF. The copy of the source is then broken (its
`__main__` exits at once, its service module is deleted) and the messaging instance killed:
the instance the supervisor starts again still serves, from the release, at the version the
fleet reports, and so does the next `parley up`, which says that the source changed.
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

from parley_client import ParleyClient
from parley_core.net import free_port
from parley_core.testing.platform import RunningPlatform
from parley_core.testing.waiting import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

REPO_ROOT = Path(__file__).resolve().parents[2]
MESSAGING_SOURCE = REPO_ROOT / "services" / "messaging"
BASE_VERSION = "0.1.0"


@pytest.fixture
def source_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "source" / "messaging"
    shutil.copytree(MESSAGING_SOURCE, copy, ignore=shutil.ignore_patterns("tests", "*.egg-info", "__pycache__"))
    return copy


@pytest.fixture
def platform(tmp_path: Path, source_copy: Path) -> Iterator[RunningPlatform]:
    running = RunningPlatform(
        data_dir=tmp_path / "data",
        env={"PYTHONPATH": str(source_copy / "src"), "PARLEY_HEARTBEAT_SECONDS": "1"},
        up_args=("--gateway-port", str(free_port())),
    )
    running.start()
    try:
        yield running
    finally:
        running.kill()


def _interpreter(pid: int) -> Path:
    return Path(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode())


def _module_file(python: Path, source_copy: Path) -> Path:
    """Where `python` finds parley_messaging, with the source copy on PYTHONPATH as the platform had it."""
    found = subprocess.run(
        [str(python), "-I", "-c", "import parley_messaging; print(parley_messaging.__file__)"],
        env={**os.environ, "PYTHONPATH": str(source_copy / "src")},
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(found.stdout.strip())


async def _fleet_version(platform: RunningPlatform, instance_id: str) -> str | None:
    out = (await asyncio.to_thread(platform.cli, "fleet", check=False)).stdout
    row = next((line.split() for line in out.splitlines() if instance_id in line and "SERVING" in line), None)
    return row[1] if row else None


async def test_instances_run_the_installed_release_and_a_restart_ignores_the_source_tree(
    platform: RunningPlatform, source_copy: Path
) -> None:
    env_dir = platform.data_dir / "agent" / "envs" / f"messaging-{BASE_VERSION}"
    messaging = platform.service("messaging")
    pid, instance_id = messaging["pid"], messaging["instances"][0]["instance_id"]  # type: ignore[index]
    assert isinstance(pid, int)
    assert _interpreter(pid) == env_dir / "bin" / "python"
    module = _module_file(_interpreter(pid), source_copy)
    assert module.is_relative_to(env_dir), module
    assert not module.resolve().is_relative_to(source_copy)
    assert not module.resolve().is_relative_to(REPO_ROOT)

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
    os.kill(pid, signal.SIGKILL)

    async def restarted() -> int | None:
        again = platform.service("messaging")["pid"]
        return (
            again
            if isinstance(again, int) and again != pid and "messaging is serving again" in platform.output()
            else None
        )

    new_pid = await eventually(restarted, "the supervisor to start messaging again", 120)
    assert _interpreter(new_pid) == env_dir / "bin" / "python"
    assert await eventually(
        lambda: _fleet_version(platform, instance_id), "the restarted instance in the fleet", 60
    ) == (BASE_VERSION)
    await _send(platform, "rita")

    # `make run` again: the data folder's release starts, and `parley up` says the source changed.
    assert platform.stop() == 0
    platform.start()
    assert f"note: {source_copy} changed since messaging {BASE_VERSION} was installed" in platform.output()
    again = platform.service("messaging")["pid"]
    assert isinstance(again, int)
    assert _interpreter(again) == env_dir / "bin" / "python"
    await _send(platform, "ruth")


async def _send(platform: RunningPlatform, user: str) -> None:
    client = ParleyClient.connect(platform.gateway_address, ca_cert=platform.ca_cert.read_bytes())
    try:
        await client.register(user, "a-long-passphrase")
        await client.login(user, "a-long-passphrase")
        channel = await client.create_channel(f"released-{user}")
        sent = await client.send(channel.channel_id, "still the release")
        assert sent.channel_seq > 0
    finally:
        await client.close()
