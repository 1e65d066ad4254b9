"""Where a py-spy speedscope profile spent its busy samples, so the bench table says it.

Idle samples (the event loop waiting in epoll, worker threads waiting for work) are left out;
what remains is split by the function on top of the stack (self time). Time inside gRPC's
Cython core shows as the asyncio callback that runs it (`Handle._run`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

IDLE_LEAVES = ("select", "poll", "wait", "_worker", "Thread.run", "acquire")


Frame = dict[str, Any]


def busy_stacks(path: Path) -> Iterator[tuple[list[Frame], float]]:
    """Each busy sample's stack (outermost frame first) with its weight; idle samples skipped."""
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    for profile in data["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            if stack and not frames[stack[-1]]["name"].endswith(IDLE_LEAVES):
                yield [frames[i] for i in stack], weight


def shares(weights: dict[str, float], *, limit: int) -> list[str]:
    busy = sum(weights.values())
    largest = sorted(weights.items(), key=lambda item: item[1], reverse=True)[:limit]
    return [f"{100.0 * w / busy:5.1f}%  {name}" for name, w in largest] if busy else []


def top_self(path: Path, *, limit: int = 10) -> list[str]:
    """Self-time share of the busy samples per function, largest first."""
    self_time: defaultdict[str, float] = defaultdict(float)
    for stack, weight in busy_stacks(path):
        leaf = stack[-1]
        self_time[f"{leaf['name']} ({Path(leaf.get('file', '?')).name}:{leaf.get('line', 0)})"] += weight
    return shares(self_time, limit=limit)


def top_packages(path: Path, *, limit: int = 10) -> list[str]:
    """Busy samples by the package of the deepest frame outside the standard library.

    Self time alone hides who asked for the work (asyncio and gRPC's core run it); this view
    showed OpenTelemetry and SQLAlchemy statement building on the send path.
    """
    owners: defaultdict[str, float] = defaultdict(float)
    for stack, weight in busy_stacks(path):
        files = (str(frame.get("file", "")) for frame in reversed(stack))
        owners[next((owner for f in files if (owner := _package(f))), "stdlib")] += weight
    return shares(owners, limit=limit)


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
