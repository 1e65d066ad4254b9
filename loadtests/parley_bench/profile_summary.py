"""Top functions of a py-spy speedscope profile, so the bench table says where time went."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path


def top_frames(path: Path, *, limit: int = 12, idle: tuple[str, ...] = ("select", "epoll", "poll")) -> list[str]:
    """Inclusive share of the non-idle samples per function, largest first."""
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    inclusive: Counter[str] = Counter()
    busy = 0
    for profile in data["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            if not stack or frames[stack[-1]]["name"] in idle:
                continue
            busy += weight
            seen = set()
            for index in stack:
                frame = frames[index]
                name = f"{frame['name']} ({Path(frame.get('file', '?')).name}:{frame.get('line', 0)})"
                if name not in seen:
                    seen.add(name)
                    inclusive[name] += weight
    if not busy:
        return []
    return [f"{100.0 * w / busy:5.1f}%  {name}" for name, w in inclusive.most_common(limit)]


if __name__ == "__main__":
    import sys

    for arg in sys.argv[1:]:
        print(arg)
        print("\n".join(top_frames(Path(arg), limit=40)))
