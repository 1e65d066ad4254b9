"""Every relative link of the README and docs/ names a file that exists (the guide is split by
reader across docs/, so a moved section must not leave a dead link behind)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_every_relative_link_in_the_docs_resolves() -> None:
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    dead = [
        f"{doc.relative_to(ROOT)}: {target}"
        for doc in docs
        for target in LINK.findall(doc.read_text())
        if "://" not in target and not (doc.parent / target).exists()
    ]
    assert dead == []


def test_the_readme_stays_a_short_front_page() -> None:
    """What it is, the two commands, chat from two terminals, where to read on: the rest is in docs/."""
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
