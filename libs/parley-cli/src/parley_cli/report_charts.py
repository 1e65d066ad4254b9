"""The compliance report's charts as inline SVG, drawn here (no script, no library, no asset):
open findings by severity, and the patch SLA over the period (per day, the open findings within
their deadline and those past it). Every label is escaped; the numbers come from the findings."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

DAY_S = 86_400.0
MAX_BARS = 60  # a longer period is drawn in longer steps
WITHIN, PAST = "#3d8f5a", "#a3171b"


@dataclass(frozen=True)
class FindingPoint:
    priority: str
    detected_at: float
    deadline: float
    overdue: bool
    fixed_at: float = 0.0  # 0: still open

    def open_at(self, t: float) -> bool:
        return self.detected_at <= t and (not self.fixed_at or t < self.fixed_at)


def _svg(width: int, height: int, label: str, parts: Sequence[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(label)}">'
        f"<title>{html.escape(label)}</title>{''.join(parts)}</svg>"
    )


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>"


def findings_by_severity(findings: Sequence[FindingPoint], severities: Sequence[str], colours: dict[str, str]) -> str:
    """Horizontal bars, one per severity: overdue (dark) and within the deadline."""
    width, row, left, right = 420, 26, 80, 110
    height = row * len(severities) + 30
    most = max((sum(1 for f in findings if f.priority == s) for s in severities), default=0) or 1
    scale = (width - left - right) / most
    parts = []
    for n, severity in enumerate(severities):
        y = 10 + n * row
        overdue = sum(1 for f in findings if f.priority == severity and f.overdue)
        total = sum(1 for f in findings if f.priority == severity)
        parts.append(
            f'<text x="{left - 8}" y="{y + 15}" text-anchor="end" font-size="12">{html.escape(severity)}</text>'
        )
        parts.append(
            f'<rect x="{left}" y="{y + 2}" width="{total * scale:.1f}" height="{row - 8}" '
            f'fill="{colours.get(severity, "#888")}" opacity="0.55"/>'
        )
        if overdue:
            parts.append(
                f'<rect x="{left}" y="{y + 2}" width="{overdue * scale:.1f}" height="{row - 8}" '
                f'fill="{colours.get(severity, "#888")}"/>'
            )
        said = f"{total} ({overdue} overdue)" if overdue else str(total)
        parts.append(f'<text x="{left + total * scale + 6:.1f}" y="{y + 15}" font-size="12">{said}</text>')
    parts.append(f'<line x1="{left}" y1="6" x2="{left}" y2="{height - 20}" stroke="#555"/>')
    label = "Open findings by severity"
    summary = ", ".join(f"{s} {sum(1 for f in findings if f.priority == s)}" for s in severities)
    return _figure(_svg(width, height, f"{label}: {summary}", parts), f"{label} (solid: overdue)")


def patch_sla_over_time(findings: Sequence[FindingPoint], *, since: float, now: float) -> str:
    """Stacked bars, one per day (or longer step) of the period: the findings open at its end that
    were detected by then and not yet fixed, within their deadline or past it. Fixed findings
    count on the days they were open (the registry records every fix; it keeps the newest 10,000 in memory)."""
    step = DAY_S
    while (now - since) / step > MAX_BARS:
        step *= 2
    ends: list[float] = []
    end = now
    while end > since and len(ends) < MAX_BARS:
        ends.append(end)
        end -= step
    ends.reverse()
    counts = [
        (
            sum(1 for f in findings if f.open_at(t) and t < f.deadline),
            sum(1 for f in findings if f.open_at(t) and f.deadline <= t),
        )
        for t in ends
    ]
    width, height, left, bottom, top = 560, 200, 36, 28, 10
    most = max((a + b for a, b in counts), default=0) or 1
    plot_h = height - top - bottom
    bar_w = (width - left - 10) / max(len(ends), 1)
    parts = [
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#555"/>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - 10}" y2="{height - bottom}" stroke="#555"/>',
        f'<text x="{left - 4}" y="{top + 10}" text-anchor="end" font-size="11">{most}</text>',
        f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end" font-size="11">0</text>',
    ]
    for n, (within, past) in enumerate(counts):
        x = left + n * bar_w + 1
        past_h = past / most * plot_h
        within_h = within / most * plot_h
        base = height - bottom
        if past:
            parts.append(
                f'<rect x="{x:.1f}" y="{base - past_h:.1f}" width="{bar_w - 2:.1f}" '
                f'height="{past_h:.1f}" fill="{PAST}"/>'
            )
        if within:
            parts.append(
                f'<rect x="{x:.1f}" y="{base - past_h - within_h:.1f}" width="{bar_w - 2:.1f}" '
                f'height="{within_h:.1f}" fill="{WITHIN}"/>'
            )
    parts.append(f'<text x="{left}" y="{height - 8}" font-size="11">{_date(ends[0] if ends else since)}</text>')
    parts.append(f'<text x="{width - 10}" y="{height - 8}" text-anchor="end" font-size="11">{_date(now)}</text>')
    within_now, past_now = counts[-1] if counts else (0, 0)
    label = f"Patch SLA over the period: now {within_now} within their deadline, {past_now} overdue"
    caption = (
        f"Open findings at the end of each {'day' if step == DAY_S else f'{step / DAY_S:g} days'}: "
        "green within their deadline, red overdue"
    )
    return _figure(_svg(width, height, label, parts), caption)


def _date(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d")
