"""Fetches a release through the stock TUF updater and installs it beside the running version.

Each version gets its own virtual environment, named in the agent's data folder, holding the
service's own wheel and the shared libraries' wheels it carries (`parley-core`, `parley-protos`:
the ones it was built with, installed as wheels, not editable), the third-party packages its
dependency lock pins (if it carries one: each `name==version` with its sha256, installed from the
host's package index or `PARLEY_RELEASE_WHEELHOUSE` with pip's --require-hashes), and a copy of
the service's wheel: what it runs, byte for byte. The lock is inside the wheel, so the TUF
signature over the wheel covers every hash in it. Other third-party dependencies come from the
host's base environment through a `.pth` hook placed after the version's own site-packages, so
the version's own packages win over the base's and the source tree's editable installs, and
nothing of the running version is touched. The base version of each service is installed
the same way, so no instance runs from the source tree. Removing a version is removing its link.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import re
import shutil
import sys
import sysconfig
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tuf.ngclient import Updater

from parley_core.errors import FailedPrecondition, NotFound

INSTALLED = ".installed"  # written last: the version's wheel name and sha256
WHEEL_DIR = ".wheel"
# Where a release wheel carries the shared libraries it was built with (under its .data/data/).
BUNDLED_LIBS = "share/parley/libs"
# Where a release wheel carries its dependency lock (pip requirements: name==version --hash=sha256:...).
BUNDLED_LOCK = "share/parley/requirements.lock"
# A folder of wheels to install locked dependencies from instead of the host's package index.
WHEELHOUSE_ENV = "PARLEY_RELEASE_WHEELHOUSE"
_PINNED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)")


class DependencyLockError(ValueError):
    """A dependency lock that does not pin and hash every requirement; the message says which."""


def parse_dependency_lock(text: str) -> dict[str, str]:
    """The packages a lock pins (name -> version); every one must be `name==version` with at least
    one `--hash=sha256:`, and no option may point pip elsewhere (the index is the host's)."""
    pinned = {}
    for number, line in enumerate(text.replace("\\\n", " ").splitlines(), 1):
        requirement = line.split(" #")[0].strip()
        if not requirement or requirement.startswith("#"):
            continue
        match = _PINNED.match(requirement)
        if match is None:
            raise DependencyLockError(f"line {number} of the dependency lock is not name==version: {line.strip()!r}")
        if "--hash=sha256:" not in requirement:
            raise DependencyLockError(f"line {number} of the dependency lock has no --hash=sha256: {match[1]}")
        pinned[match[1].lower().replace("_", "-")] = match[3]
    return pinned


def dependency_lock(wheel: Path) -> str | None:
    """The dependency lock `wheel` carries, if any."""
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.endswith(f".data/data/{BUNDLED_LOCK}"):
                return archive.read(name).decode()
    return None


@dataclass(frozen=True)
class TufSource:
    metadata_url: str
    targets_url: str
    trusted_root: bytes  # used only on the agent's first contact; later the stored root chain


class NotThePublishedRelease(FailedPrecondition):
    """The signed target is not the bytes the registry recorded when the release was published."""


def fetch_release(
    source: TufSource, target_path: str, cache_dir: Path, *, sha256: str
) -> tuple[Path, dict[str, object]]:
    """Verified download; raises tuf's errors on any tampering, rollback or expiry, and
    NotThePublishedRelease unless the wheel's sha256 is `sha256`, the one the release's
    ReleasePublished event recorded: whoever holds the registry folder's signing keys can re-sign
    a target under an existing path, but cannot change what the event log recorded."""
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
    if (fetched := _sha256(Path(path))) != sha256:
        raise NotThePublishedRelease(
            f"{target_path} in the TUF repository has sha256 {fetched}, not {sha256 or '(none recorded)'}, the one"
            " the registry recorded when it was published: its target was re-signed since (by someone holding"
            " the registry folder's keys?); refusing to install it. Check who changed the repository, then"
            " publish the release again under a new version"
        )
    return Path(path), dict(info.custom)


def _base_site_packages() -> str:
    return sysconfig.get_paths()["purelib"]


def install_cache() -> Path:
    """Where this host keeps installed versions, shared by every data folder (`make test` starts many)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "parley" / "installs"


async def _run(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    if process.returncode != 0:
        raise FailedPrecondition(f"{' '.join(args[:4])}… failed ({process.returncode}): {output.decode()[-2000:]}")


def _clear_unfinished(env_dir: Path) -> bool:
    """True if the version is already installed; removes a half-made one (interrupted install)."""
    if (env_dir / INSTALLED).exists():
        return True
    if env_dir.is_symlink():
        env_dir.unlink()  # its cache entry was removed
    elif env_dir.exists():
        shutil.rmtree(env_dir)
    return False


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as wheel:
        for block in iter(lambda: wheel.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def installed_wheel(env_dir: Path) -> Path | None:
    """The wheel a version's environment was installed from (kept in it: what it runs, byte for byte)."""
    marker = env_dir / INSTALLED
    if not marker.exists():
        return None
    wheel = env_dir / WHEEL_DIR / marker.read_text().split()[0]
    return wheel if wheel.exists() else None


def bundled_libraries(wheel: Path) -> list[str]:
    """The shared-library wheels `wheel` carries (its zip members)."""
    with zipfile.ZipFile(wheel) as archive:
        return [name for name in archive.namelist() if f".data/data/{BUNDLED_LIBS}/" in name and name.endswith(".whl")]


def _extract_libraries(wheel: Path, into: Path) -> list[Path]:
    with zipfile.ZipFile(wheel) as archive:
        extracted = []
        for name in bundled_libraries(wheel):
            target = into / name.rpartition("/")[2]
            target.write_bytes(archive.read(name))
            extracted.append(target)
        return extracted


async def _make_env(wheel: Path, env_dir: Path) -> None:
    await _run(sys.executable, "-m", "venv", "--without-pip", str(env_dir))
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    own_site = env_dir / "lib" / version / "site-packages"
    # addsitedir also runs the base's own .pth files (editable installs of the shared libraries).
    # Own site-packages comes first, so the libraries installed here hide those editable installs.
    (own_site / "zz-parley-base.pth").write_text(f"import site; site.addsitedir({_base_site_packages()!r})\n")
    with tempfile.TemporaryDirectory() as tmp:
        libraries = await asyncio.to_thread(_extract_libraries, wheel, Path(tmp))
        await _pip_install(env_dir, "--no-index", str(wheel), *map(str, libraries))
    lock = await asyncio.to_thread(dependency_lock, wheel)
    if lock is not None:
        await _install_locked(env_dir, lock)
    (env_dir / WHEEL_DIR).mkdir()
    shutil.copyfile(wheel, env_dir / WHEEL_DIR / wheel.name)
    (env_dir / INSTALLED).write_text(f"{wheel.name} {_sha256(wheel)}\n")


async def _install_locked(env_dir: Path, lock: str) -> None:
    """The pinned third-party packages, into the version's own site-packages (before the base's),
    each file checked against the lock's sha256 by pip."""
    parse_dependency_lock(lock)  # refused at build already; a wheel built by other means too
    wheelhouse = os.environ.get(WHEELHOUSE_ENV, "")
    source = ["--no-index", "--find-links", wheelhouse] if wheelhouse else []
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.lock"
        requirements.write_text(lock)
        await _pip_install(env_dir, "--require-hashes", "--only-binary", ":all:", *source, "-r", str(requirements))


async def _pip_install(env_dir: Path, *args: str) -> None:
    """pip of the base environment installing into the version's own, never a dependency unasked."""
    await _run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(env_dir / "bin" / "python"),
        "install",
        "--quiet",
        "--no-deps",
        *args,
    )


async def install_version(wheel: Path, env_dir: Path, *, cache_dir: Path | None = None) -> Path:
    """A venv with just this wheel; returns its python. Idempotent per version folder.

    The venv itself lives in the host's install cache, one per wheel content (and base
    environment), and `env_dir` links to it: a version is installed once per host, so every
    platform start after the first starts its instances at once.
    """
    python = env_dir / "bin" / "python"
    if await asyncio.to_thread(_clear_unfinished, env_dir):
        return python
    cache_dir = cache_dir or install_cache()
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    base = hashlib.sha256(f"{_base_site_packages()}|{sys.version}".encode()).hexdigest()[:8]
    cached = cache_dir / f"{wheel.name.removesuffix('.whl')}-{_sha256(wheel)[:24]}-{base}"
    # One installer per cache entry at a time (two platforms starting together share it).
    lock = os.open(cache_dir / f"{cached.name}.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        if not await asyncio.to_thread(_clear_unfinished, cached):
            await _make_env(wheel, cached)
    finally:
        os.close(lock)  # releases the lock
    await asyncio.to_thread(_link, env_dir, cached)
    return python


def _link(env_dir: Path, cached: Path) -> None:
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    env_dir.symlink_to(cached, target_is_directory=True)


def base_python() -> Path:
    """The interpreter of the environment the agent itself runs in: for a service installed there
    from a wheel (not from a source folder), the host's base version."""
    return Path(sys.executable)
