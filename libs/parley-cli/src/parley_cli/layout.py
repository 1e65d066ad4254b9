"""How the CLI lays out what it prints: columns as a table, an instant to the millisecond (or the
second, or the minute), a deadline counted from now."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from parley_cli.terminal import shown


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns as wide as their widest cell; readable in a terminal and in a log."""
    cells = [[str(h) for h in headers], *[[shown(str(c)) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def when(unix: float) -> str:
    """To the millisecond: the audit orders steps that happen within the same second."""
    if not unix:
        return "-"
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def utc_second(unix: float) -> str:
    """To the second: when a lockout or a slow-down ends."""
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def utc_minute(unix: float) -> str:
    """To the minute: when an invitation expires, a report's dates."""
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M UTC")


def due(deadline: float, now: float) -> str:
    left = deadline - now
    if left < 0:
        return f"OVERDUE by {span(-left)}"
    return f"in {span(left)}"


def span(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"
