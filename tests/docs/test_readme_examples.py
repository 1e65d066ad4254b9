"""Every Python snippet of the README and docs/ is one of examples/*.py, printed whole, so that what
a reader copies is what CI runs (tests/e2e/test_new_user_cli.py runs each against a platform)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_python_snippet_is_an_example_file_printed_whole() -> None:
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    snippets = [s for doc in docs for s in re.findall(r"```python\n(.*?)```\n", doc.read_text(), re.S)]
    examples = {path.name: path.read_text() for path in sorted((ROOT / "examples").glob("*.py"))}
    assert examples, "no examples/*.py"
    for snippet in snippets:
        assert snippet in examples.values(), f"a snippet of the docs that is no examples/ file:\n{snippet[:300]}"
    shown = {name for name, text in examples.items() if text in snippets}
    assert shown == set(examples), f"examples no doc shows: {sorted(set(examples) - shown)}"
