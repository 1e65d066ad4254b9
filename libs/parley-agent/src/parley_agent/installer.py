"""Fetches a release through the stock TUF updater and installs it beside the running version.

Each version gets its own virtual environment under the agent's data folder, holding only the
service's own wheel; the shared dependencies come from the host's base environment through a
`.pth` hook placed after the version's own site-packages, so the new wheel wins and nothing of
the running version is touched. Removing a version is removing its folder.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from tuf.ngclient import Updater

from parley_core.errors import FailedPrecondition, NotFound


@dataclass(frozen=True)
class TufSource:
    metadata_url: str
    targets_url: str
    trusted_root: bytes  # used only on the agent's first contact; later the stored root chain


def fetch_release(source: TufSource, target_path: str, cache_dir: Path) -> tuple[Path, dict[str, object]]:
    """Verified download; raises tuf's errors on any tampering, rollback or expiry."""
    metadata_dir = cache_dir / "metadata"
    downloads = cache_dir / "downloads"
    metadata_dir.mkdir(parents=True, exist_ok=True)
    downloads.mkdir(parents=True, exist_ok=True)
    if not (metadata_dir / "root.json").exists():
        (metadata_dir / "root.json").write_bytes(source.trusted_root)
    updater = Updater(
        metadata_dir=str(metadata_dir),
        metadata_base_url=source.metadata_url,
        target_dir=str(downloads),
        target_base_url=source.targets_url,
        bootstrap=None,
    )
    updater.refresh()
    info = updater.get_targetinfo(target_path)
    if info is None:
        raise NotFound(f"the TUF repository does not list {target_path}")
    # Saved under its own file name (pip reads the wheel's name from it), in a folder per hash.
    local = downloads / info.hashes["sha256"] / info.path.rpartition("/")[2]
    local.parent.mkdir(exist_ok=True)
    path = updater.find_cached_target(info, str(local)) or updater.download_target(info, str(local))
    return Path(path), dict(info.custom)


def _base_site_packages() -> str:
    return sysconfig.get_paths()["purelib"]


async def _run(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    if process.returncode != 0:
        raise FailedPrecondition(f"{' '.join(args[:4])}… failed ({process.returncode}): {output.decode()[-2000:]}")


def _clear_unfinished(env_dir: Path) -> bool:
    """True if the version is already installed; removes a half-made one (interrupted install)."""
    if (env_dir / ".installed").exists():
        return True
    if env_dir.exists():
        shutil.rmtree(env_dir)
    return False


async def install_version(wheel: Path, env_dir: Path) -> Path:
    """A venv with just this wheel; returns its python. Idempotent per version folder."""
    python = env_dir / "bin" / "python"
    if await asyncio.to_thread(_clear_unfinished, env_dir):
        return python
    await _run(sys.executable, "-m", "venv", "--without-pip", str(env_dir))
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    own_site = env_dir / "lib" / version / "site-packages"
    # addsitedir also runs the base's own .pth files (editable installs of the shared libraries).
    (own_site / "zz-parley-base.pth").write_text(f"import site; site.addsitedir({_base_site_packages()!r})\n")
    await _run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "install",
        "--quiet",
        "--no-deps",
        "--no-index",
        str(wheel),
    )
    (env_dir / ".installed").write_text(wheel.name)
    return python


def base_python() -> Path:
    """The interpreter of the environment the agent itself runs in: the host's base version."""
    return Path(sys.executable)
