"""A release wheel carries the shared libraries it was built with, and its environment runs them.

Real builds and installs (pip, venv): a messaging release is built in a process that imports
parley-core from a changed copy of its source folder, as a publisher's checkout would; the
installed release runs that copy's parley_core, as a wheel in its own environment, and neither
the repository's editable install nor a later change to the copy reaches it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from parley_agent.installer import bundled_libraries, install_version

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
