"""Builds one service's own wheel at a given version, for `parley patch publish`.

The source tree is copied and only the version in its pyproject.toml changes, so the wheel is
the service as it is in the repository; dependencies are not bundled (they are the host's).
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


class WheelBuildError(Exception):
    """The wheel could not be built; the message says why."""


VERSION_LINE = re.compile(r'^version\s*=\s*"[^"]*"', re.MULTILINE)
IGNORED = ("tests", "build", "*.egg-info", "__pycache__")


def source_digest(source_dir: Path) -> str:
    """sha256 over every file a wheel of `source_dir` is built from (names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(source_dir.rglob("*")):
        relative = path.relative_to(source_dir)
        if not path.is_file() or any(fnmatch.fnmatch(part, pattern) for part in relative.parts for pattern in IGNORED):
            continue
        digest.update(str(relative).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def build_wheel(source_dir: Path, version: str, out_dir: Path) -> Path:
    pyproject = source_dir / "pyproject.toml"
    if not pyproject.exists():
        raise WheelBuildError(f"{source_dir} has no pyproject.toml; name a service folder such as services/messaging")
    if not re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version):
        raise WheelBuildError(f"{version!r} is not a version")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / source_dir.name
        shutil.copytree(source_dir, copy, ignore=shutil.ignore_patterns(*IGNORED))
        text = (copy / "pyproject.toml").read_text()
        if not VERSION_LINE.search(text):
            raise WheelBuildError(f"{pyproject} has no static version line")
        (copy / "pyproject.toml").write_text(VERSION_LINE.sub(f'version = "{version}"', text, count=1))
        before = set(out_dir.glob("*.whl"))
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "-w",
                str(out_dir),
                str(copy),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise WheelBuildError(f"building {source_dir.name} {version} failed: {result.stderr[-2000:]}")
    built = [p for p in out_dir.glob("*.whl") if p not in before and f"-{version}-" in p.name]
    if len(built) != 1:
        raise WheelBuildError(f"expected one new wheel for {version} in {out_dir}, found {built}")
    return built[0]
