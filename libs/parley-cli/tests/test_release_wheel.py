"""A release wheel carries the shared libraries it was built with, and its environment runs them.

Real builds and installs (pip, venv): a messaging release is built in a process that imports
parley-core from a changed copy of its source folder, as a publisher's checkout would; the
installed release runs that copy's parley_core, as a wheel in its own environment, and neither
the repository's editable install nor a later change to the copy reaches it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from parley_agent.installer import WHEELHOUSE_ENV, bundled_libraries, dependency_lock, install_version
from parley_cli.wheels import WheelBuildError, build_wheel
from parley_core.errors import FailedPrecondition

REPO_ROOT = Path(__file__).resolve().parents[3]
MARKER = "BUILT_FROM_THE_COPY = True\n"


def _build_with_core_from(core: Path, out_dir: Path, cache: Path) -> Path:
    script = (
        "import sys; from pathlib import Path; from parley_cli.wheels import build_wheel; "
        f"print(build_wheel(Path({str(REPO_ROOT / 'services' / 'messaging')!r}), '0.7.0', Path({str(out_dir)!r})))"
    )
    built = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(core / "src"), "XDG_CACHE_HOME": str(cache)},
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(built.stdout.strip().splitlines()[-1])


def _import(python: Path, expression: str) -> str:
    found = subprocess.run([str(python), "-I", "-c", expression], capture_output=True, text=True, check=True)
    return found.stdout.strip()


def test_a_release_runs_the_shared_libraries_it_was_built_with(tmp_path: Path) -> None:
    core = tmp_path / "parley-core"
    ignored = shutil.ignore_patterns("*.egg-info", "__pycache__")
    shutil.copytree(REPO_ROOT / "libs" / "parley-core", core, ignore=ignored)
    init = core / "src" / "parley_core" / "__init__.py"
    init.write_text(init.read_text() + MARKER)
    wheel = _build_with_core_from(core, tmp_path / "wheels", tmp_path / "cache")

    carried = sorted(name.rpartition("/")[2] for name in bundled_libraries(wheel))
    assert [name.split("-")[0] for name in carried] == ["parley_core", "parley_protos"], carried
    with zipfile.ZipFile(wheel) as archive:
        record = next(n for n in archive.namelist() if n.endswith(".dist-info/RECORD"))
        assert all(name in archive.read(record).decode() for name in bundled_libraries(wheel))

    env_dir = tmp_path / "envs" / "messaging-0.7.0"
    python = asyncio.run(install_version(wheel, env_dir, cache_dir=tmp_path / "installs"))
    init.unlink()  # the source it was built from is gone: the release does not need it
    module = Path(_import(python, "import parley_core; print(parley_core.__file__)"))
    assert module.is_relative_to(env_dir), module
    assert not module.resolve().is_relative_to(REPO_ROOT)
    assert _import(python, "import parley_core; print(parley_core.BUILT_FROM_THE_COPY)") == "True"
    protos = Path(_import(python, "import parley; print(parley.__file__)"))
    assert protos.is_relative_to(env_dir), protos
    assert not any(env_dir.resolve().glob("lib/*/site-packages/__editable__*parley_core*")), "not editable"


def _third_party_wheel(wheelhouse: Path, name: str, version: str, extra: str = "") -> Path:
    """A wheel of `name` at `version` (made here: the test reaches no package index); its module
    says which version it is."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"__version__ = {version!r}\n{extra}".encode(),
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for path, data in files.items()
    )
    wheel = wheelhouse / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{dist_info}/RECORD", record + f"{dist_info}/RECORD,,\n")
    return wheel


def _lock_for(wheel: Path, name: str, version: str, path: Path) -> Path:
    path.write_text(f"{name}=={version} \\\n    --hash=sha256:{hashlib.sha256(wheel.read_bytes()).hexdigest()}\n")
    return path


def test_a_release_runs_the_third_party_version_its_lock_pins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """messaging needs emoji; the base environment has one version, the release pins another (as a
    release bringing a patched dependency would) and runs it, from its own environment."""
    base_version = _import(Path(sys.executable), "import importlib.metadata as m; print(m.version('emoji'))")
    pinned = "99.0.1"
    assert base_version != pinned
    wheelhouse = tmp_path / "wheelhouse"
    emoji = _third_party_wheel(wheelhouse, "emoji", pinned)
    lock = _lock_for(emoji, "emoji", pinned, tmp_path / "requirements.lock")
    wheel = build_wheel(REPO_ROOT / "services" / "messaging", "0.7.1", tmp_path / "wheels", dependency_lock=lock)
    assert dependency_lock(wheel) == lock.read_text()  # inside the signed wheel, listed in its RECORD
    with zipfile.ZipFile(wheel) as archive:
        record = next(n for n in archive.namelist() if n.endswith(".dist-info/RECORD"))
        assert "share/parley/requirements.lock," in archive.read(record).decode()

    monkeypatch.setenv(WHEELHOUSE_ENV, str(wheelhouse))
    env_dir = tmp_path / "envs" / "messaging-0.7.1"
    python = asyncio.run(install_version(wheel, env_dir, cache_dir=tmp_path / "installs"))
    assert _import(python, "import emoji; print(emoji.__version__)") == pinned
    module = Path(_import(python, "import emoji; print(emoji.__file__)"))
    assert module.is_relative_to(env_dir), module
    # What its heartbeats report to the advisory matcher is the version it runs.
    reported = "from parley_core.inventory import running_distributions as r; "
    reported += "print({d.name: d.version for d in r('parley-messaging')}['emoji'])"
    assert _import(python, reported) == pinned
    # The base environment keeps its own version.
    assert _import(Path(sys.executable), "import importlib.metadata as m; print(m.version('emoji'))") == base_version


def test_a_locked_dependency_whose_bytes_differ_from_its_hash_is_not_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheelhouse = tmp_path / "wheelhouse"
    lock = _lock_for(_third_party_wheel(tmp_path / "signed", "emoji", "99.0.1"), "emoji", "99.0.1", tmp_path / "lock")
    # A well-formed wheel of the same name and version, but not the bytes the lock names.
    _third_party_wheel(wheelhouse, "emoji", "99.0.1", extra="TAMPERED = True\n")
    wheel = build_wheel(REPO_ROOT / "services" / "messaging", "0.7.2", tmp_path / "wheels", dependency_lock=lock)
    monkeypatch.setenv(WHEELHOUSE_ENV, str(wheelhouse))
    env_dir = tmp_path / "envs" / "messaging-0.7.2"
    with pytest.raises(FailedPrecondition, match=r"(?i)do not match the hashes"):
        asyncio.run(install_version(wheel, env_dir, cache_dir=tmp_path / "installs"))
    assert not env_dir.exists()  # no half-made version to run


def test_a_lock_that_does_not_pin_and_hash_is_refused_at_build(tmp_path: Path) -> None:
    for text, says in (("emoji>=2\n", "not name==version"), ("emoji==2.1\n", "no --hash")):
        lock = tmp_path / "requirements.lock"
        lock.write_text(text)
        with pytest.raises(WheelBuildError, match=says):
            build_wheel(REPO_ROOT / "services" / "messaging", "0.7.3", tmp_path / "wheels", dependency_lock=lock)
