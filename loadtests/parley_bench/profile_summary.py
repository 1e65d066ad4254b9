"""Where a py-spy speedscope profile spent its busy samples, so the bench table says it.

Idle samples (the event loop waiting in epoll, worker threads waiting for work) are left out;
what remains is split by the function on top of the stack (self time). Time inside gRPC's
Cython core shows as the asyncio callback that runs it (`Handle._run`).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

IDLE_LEAVES = ("select", "poll", "wait", "_worker", "Thread.run", "acquire")


def top_self(path: Path, *, limit: int = 10) -> list[str]:
    """Self-time share of the busy samples per function, largest first."""
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    self_time: Counter[str] = Counter()
    busy = 0.0
    for profile in data["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            if not stack:
                continue
            leaf = frames[stack[-1]]
            if leaf["name"].endswith(IDLE_LEAVES):
                continue
            busy += weight
            self_time[f"{leaf['name']} ({Path(leaf.get('file', '?')).name}:{leaf.get('line', 0)})"] += weight
    if not busy:
        return []
    return [f"{100.0 * w / busy:5.1f}%  {name}" for name, w in self_time.most_common(limit)]


def top_packages(path: Path, *, limit: int = 10) -> list[str]:
    """Busy samples by the package of the deepest frame outside the standard library.

    Self time alone hides who asked for the work (asyncio and gRPC's core run it); this view
    showed OpenTelemetry and SQLAlchemy statement building on the send path.
    """
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    owners: Counter[str] = Counter()
    busy = 0.0
    for profile in data["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            if not stack or frames[stack[-1]]["name"].endswith(IDLE_LEAVES):
                continue
            busy += weight
            files = (str(frames[i].get("file", "")) for i in reversed(stack))
            owners[next((owner for f in files if (owner := _package(f))), "stdlib")] += weight
    if not busy:
        return []
    return [f"{100.0 * w / busy:5.1f}%  {name}" for name, w in owners.most_common(limit)]


def _package(file: str) -> str:
    """`sqlalchemy` for a file in site-packages, `parley_core/bus.py` for Parley's, '' for stdlib."""
    if "site-packages/" in file:
        return file.split("site-packages/", 1)[1].split("/", 1)[0]
    parts = Path(file).parts
    for i, part in enumerate(parts):
        if part.startswith("parley_"):
            return "/".join(parts[i:])
    return ""


if __name__ == "__main__":
    import sys

    for arg in sys.argv[1:]:
        print(arg)
        print("\n".join(top_self(Path(arg), limit=25)))
        print("by package:")
        print("\n".join(top_packages(Path(arg), limit=15)))
