"""Builds one service's wheel at a given version, for `parley patch publish` and the base releases.

The source tree is copied and only the version in its pyproject.toml changes, so the wheel is
the service as it is in the repository. The shared libraries it is built against (`parley-core`,
`parley-protos`, from the source folders this environment imports them from) travel inside it,
as wheels of their own under `<dist>.data/data/share/parley/libs/`; the agent's installer
installs them into the release's environment (not editable), so a release runs the libraries it
was built with, whatever happens to the source tree later. Third-party dependencies are the
host's, except those the publisher pins in a dependency lock (`--dependency-lock`: pip
requirements, each `name==version --hash=sha256:...`), which the release carries at
`<dist>.data/data/share/parley/requirements.lock` and the installer installs into its environment.
"""

from __future__ import annotations

import base64
import fcntl
import fnmatch
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from parley_agent.installer import BUNDLED_LIBS, BUNDLED_LOCK, DependencyLockError, parse_dependency_lock


class WheelBuildError(Exception):
    """The wheel could not be built; the message says why."""


VERSION_LINE = re.compile(r'^version\s*=\s*"[^"]*"', re.MULTILINE)
IGNORED = ("tests", "build", "*.egg-info", "__pycache__")
# The shared libraries a release carries, by distribution, with the package that locates their source.
SHARED_LIBRARIES = {"parley-core": "parley_core", "parley-protos": "parley"}
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed: the same libraries make the same bytes


def source_digest(source_dir: Path) -> str:
    """sha256 over every file a wheel of `source_dir` is built from (names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(source_dir.rglob("*")):
        relative = path.relative_to(source_dir)
        if not path.is_file() or any(fnmatch.fnmatch(part, pattern) for part in relative.parts for pattern in IGNORED):
            continue
        digest.update(str(relative).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def shared_library_sources() -> list[Path]:
    """The source folders of the shared libraries as this environment imports them (an editable
    install, or a folder on PYTHONPATH); a library installed from a wheel is not rebuilt."""
    folders = []
    for package in SHARED_LIBRARIES.values():
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin:
            project = Path(spec.origin).resolve().parents[2]  # <project>/src/<package>/__init__.py
            if (project / "pyproject.toml").exists():
                folders.append(project)
    return folders


def release_sources(source_dir: Path) -> dict[str, str]:
    """Every folder a release of `source_dir` is built from, with its content digest."""
    return {str(folder): source_digest(folder) for folder in [source_dir, *shared_library_sources()]}


def _pip_wheel(project: Path, out_dir: Path) -> None:
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    result = subprocess.run([*command, "-w", str(out_dir), str(project)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise WheelBuildError(f"building {project.name} failed: {result.stderr[-2000:]}")


def library_wheel(source_dir: Path) -> Path:
    """The wheel of a shared library's source folder, built once per content (user's cache)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "parley" / "lib-wheels"
    key = cache / f"{source_dir.name}-{source_digest(source_dir)[:32]}"
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    # One build per key at a time: every service's release carries the same libraries.
    lock = os.open(cache / f"{key.name}.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not key.is_dir():
            staged = Path(tempfile.mkdtemp(dir=cache))
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    copy = Path(tmp) / source_dir.name
                    shutil.copytree(source_dir, copy, ignore=shutil.ignore_patterns(*IGNORED))
                    _pip_wheel(copy, staged)
                staged.rename(key)  # atomic: a key folder always holds its whole wheel
            finally:
                shutil.rmtree(staged, ignore_errors=True)
    finally:
        os.close(lock)  # releases the lock
    built = sorted(key.glob("*.whl"))
    if len(built) != 1:
        raise WheelBuildError(f"expected one wheel of {source_dir.name} in {key}, found {built}")
    return built[0]


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def bundle_libraries(wheel: Path, libraries: list[Path], lock: str | None = None) -> None:
    """Adds `libraries` (wheels) and the dependency `lock` to `wheel` as data files, listed in its RECORD."""
    with zipfile.ZipFile(wheel) as original:
        entries = [(info, original.read(info)) for info in original.infolist()]
    record_name = next(info.filename for info, _ in entries if info.filename.endswith(".dist-info/RECORD"))
    data_dir = record_name.split("/")[0].removesuffix(".dist-info") + ".data"
    added = [(f"{data_dir}/data/{BUNDLED_LIBS}/{library.name}", library.read_bytes()) for library in libraries]
    if lock is not None:
        added.append((f"{data_dir}/data/{BUNDLED_LOCK}", lock.encode()))
    record = next(data for info, data in entries if info.filename == record_name).decode()
    record += "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in added)
    staged = wheel.with_suffix(".bundling")
    with zipfile.ZipFile(staged, "w", zipfile.ZIP_DEFLATED) as out:
        for info, data in entries:
            if info.filename != record_name:
                out.writestr(info, data)
        for name, data in added:
            out.writestr(zipfile.ZipInfo(name, _ZIP_TIME), data, zipfile.ZIP_STORED)
        out.writestr(zipfile.ZipInfo(record_name, _ZIP_TIME), record)
    staged.replace(wheel)


def build_wheel(source_dir: Path, version: str, out_dir: Path, *, dependency_lock: Path | None = None) -> Path:
    """`dependency_lock`: third-party packages the release brings itself (pinned and hashed)."""
    pyproject = source_dir / "pyproject.toml"
    if not pyproject.exists():
        raise WheelBuildError(f"{source_dir} has no pyproject.toml; name a service folder such as services/messaging")
    if not re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version):
        raise WheelBuildError(f"{version!r} is not a version")
    lock = None
    if dependency_lock is not None:
        try:
            lock = dependency_lock.read_text()
            parse_dependency_lock(lock)
        except (OSError, UnicodeDecodeError, DependencyLockError) as error:
            raise WheelBuildError(f"{dependency_lock}: {error}") from error
    out_dir.mkdir(parents=True, exist_ok=True)
    libraries = [library_wheel(folder) for folder in shared_library_sources()]
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / source_dir.name
        shutil.copytree(source_dir, copy, ignore=shutil.ignore_patterns(*IGNORED))
        text = (copy / "pyproject.toml").read_text()
        if not VERSION_LINE.search(text):
            raise WheelBuildError(f"{pyproject} has no static version line")
        (copy / "pyproject.toml").write_text(VERSION_LINE.sub(f'version = "{version}"', text, count=1))
        before = set(out_dir.glob("*.whl"))
        _pip_wheel(copy, out_dir)
    built = [p for p in out_dir.glob("*.whl") if p not in before and f"-{version}-" in p.name]
    if len(built) != 1:
        raise WheelBuildError(f"expected one new wheel for {version} in {out_dir}, found {built}")
    bundle_libraries(built[0], libraries, lock)
    return built[0]
