"""A base release's wheel is rebuilt only when what goes into it changed."""

from __future__ import annotations

from pathlib import Path

from parley_cli.wheels import source_digest


def test_digest_follows_the_built_files_only(tmp_path: Path) -> None:
    source = tmp_path / "messaging"
    (source / "src" / "pkg").mkdir(parents=True)
    (source / "tests").mkdir()
    (source / "pyproject.toml").write_text('version = "0.1.0"\n')
    (source / "src" / "pkg" / "mod.py").write_text("A = 1\n")
    first = source_digest(source)
    (source / "tests" / "test_x.py").write_text("def test(): ...\n")
    (source / "src" / "pkg" / "__pycache__").mkdir()
    (source / "src" / "pkg" / "__pycache__" / "mod.pyc").write_bytes(b"\0")
    assert source_digest(source) == first
    (source / "src" / "pkg" / "mod.py").write_text("A = 2\n")
    assert source_digest(source) != first
