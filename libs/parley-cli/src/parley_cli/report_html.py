"""The compliance report as one self-contained HTML page: the same content as the Markdown report
(rendered from it, line by line, so the two never say different things), with inline CSS, no
script and no external asset, every text escaped, and the charts a person would rather look at
(findings by severity, patch SLA over the period) drawn here as inline SVG.

Only the Markdown that compliance.py writes is understood: headings, paragraphs, "- " lists,
pipe tables (cells escaped by compliance._cell), **bold** and `code`.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence

from parley_core.compliance_reports import REPORT_STYLE

SEVERITY_COLOURS = {
    "critical": "#a3171b",
    "high": "#e0622a",
    "medium": "#e3b341",
    "low": "#4f8fd6",
    "unscored": "#8a93a3",
}
_SEPARATOR = re.compile(r"^\|(?:-+\|)+$")
_INLINE = re.compile(r"(\*\*.+?\*\*|`[^`]+`)")


def _inline(text: str) -> str:
    """Escaped text with the report's **bold** and `code`."""
    out = []
    for part in _INLINE.split(text):
        if part.startswith("**") and part.endswith("**") and len(part) > 4:
            out.append(f"<strong>{html.escape(part[2:-2])}</strong>")
        elif part.startswith("`") and part.endswith("`") and len(part) > 2:
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
        else:
            out.append(html.escape(part))
    return "".join(out)


def _cells(row: str) -> list[str]:
    """A Markdown table row's cells, undoing compliance._cell's escapes (\\|, \\\\, &lt;)."""
    cells, current, i = [], [], 1  # past the leading "|"
    while i < len(row):
        char = row[i]
        if char == "\\" and i + 1 < len(row):
            current.append(row[i + 1])
            i += 2
            continue
        if char == "|":
            cells.append("".join(current).strip().replace("&lt;", "<"))
            current = []
        else:
            current.append(char)
        i += 1
    return cells


# Columns kept on one line (a time, a record's position): printed on A4, the table would
# otherwise squeeze them into a few characters a line beside a wide sentence.
NOWRAP = frozenset({"when", "erased", "reference", "recorded"})


def _table(rows: Sequence[str]) -> list[str]:
    header, body = _cells(rows[0]), [_cells(r) for r in rows[1:] if not _SEPARATOR.match(r)]
    kept = [' class="nowrap"' if c in NOWRAP else "" for c in header]
    head = "".join(f"<th{k}>{_inline(c)}</th>" for k, c in zip(kept, header, strict=False))
    out = ["<table>", f"<thead><tr>{head}</tr></thead>", "<tbody>"]
    out += [
        "<tr>" + "".join(f"<td{k}>{_inline(c)}</td>" for k, c in zip(kept, row, strict=False)) + "</tr>" for row in body
    ]
    return [*out, "</tbody></table>"]


def _unescape_text(line: str) -> str:
    """A list item or paragraph may carry compliance._cell's escapes too."""
    return line.replace("\\|", "|").replace("\\\\", "\\").replace("&lt;", "<")


def markdown_to_html(markdown: str, charts: Mapping[str, Sequence[str]] | None = None) -> str:
    """The report page: `charts` maps a section title (an "## " heading) to SVG figures shown under it."""
    charts = charts or {}
    lines = markdown.splitlines()
    title = lines[0].removeprefix("# ") if lines and lines[0].startswith("# ") else "Parley compliance report"
    body: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            body += _table(block)
        elif line.startswith("- "):
            body.append("<ul>")
            while i < len(lines) and lines[i].startswith("- "):
                body.append(f"<li>{_inline(_unescape_text(lines[i][2:]))}</li>")
                i += 1
            body.append("</ul>")
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            text = line[level:].strip()
            body.append(f"<h{level}>{_inline(text)}</h{level}>")
            if level == 2 and charts.get(text):
                body += ['<div class="charts">', *charts[text], "</div>"]
            i += 1
        else:
            paragraph = []
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(("|", "- ", "#")):
                paragraph.append(_inline(_unescape_text(lines[i])))
                i += 1
            body.append("<p>" + " ".join(paragraph) + "</p>")
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            # No script, no fetch: the page is a record, opened anywhere, by anyone.
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
            f"<title>{html.escape(title)}</title>",
            f"<style>{REPORT_STYLE}</style>",
            "</head><body>",
            *body,
            "</body></html>",
            "",
        ]
    )
