"""Where the compliance reports are filed (<data>/reports/compliance-<time>.<md|html|pdf>) and how
a reader finds one: by id (the file name without its suffix), never by a path, so a caller can
name nothing outside that folder. `parley report compliance` writes them, the console reads them."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REPORTS_DIR = "reports"
ID_TIME_FORMAT = "%Y-%m-%dT%H%M%SZ"
FORMATS = ("html", "md", "pdf")  # the order a reader prefers them in
TEXT_FORMATS = ("html", "md")
# The HTML report's only stylesheet, inline so the filed page stands alone. The console shows a
# report in a sandboxed srcdoc frame, which keeps the console's CSP: the gateway allows exactly
# this stylesheet by its hash (REPORT_STYLE_SOURCE), never inline styles in general.
REPORT_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d2330;margin:2rem auto;max-width:70rem;
padding:0 1.5rem}
h1{font-size:1.7rem;border-bottom:3px solid #2f5fd0;padding-bottom:.3rem}
h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #d5dae3;padding-bottom:.2rem;break-after:avoid}
h3{font-size:1.05rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:12.5px;width:100%}
th,td{border:1px solid #d5dae3;padding:.25rem .45rem;text-align:left;vertical-align:top;overflow-wrap:break-word}
th{background:#eef1f7}
.nowrap{white-space:nowrap;overflow-wrap:normal}
tr{break-inside:avoid}
code{font:12px ui-monospace,monospace;background:#f2f4f8;padding:0 .2rem;overflow-wrap:anywhere}
strong{color:#a3171b}
figure{margin:1rem 0;break-inside:avoid}
figcaption{font-size:12px;color:#555}
.charts{display:flex;flex-wrap:wrap;gap:2rem}
@page{size:A4;margin:14mm}
@media print{body{margin:0;max-width:none;padding:0}table{font-size:10.5px}}
"""
REPORT_STYLE_SOURCE = "'sha256-" + base64.b64encode(hashlib.sha256(REPORT_STYLE.encode()).digest()).decode() + "'"
_ID = re.compile(r"compliance-(\d{4}-\d{2}-\d{2}T\d{6}Z)")


class NoSuchReport(Exception):
    """The id or format names no filed report; the message says what there is instead."""


class BadReportRequest(Exception):
    """No report id (a path, say) or no format a reader reads."""


def report_id(at: datetime) -> str:
    return f"compliance-{at.strftime(ID_TIME_FORMAT)}"


def written_at(report: str) -> float | None:
    """The time in a report id; None when `report` is no report id."""
    match = _ID.fullmatch(report)
    if match is None:
        return None
    return datetime.strptime(match.group(1), ID_TIME_FORMAT).replace(tzinfo=UTC).timestamp()


@dataclass(frozen=True)
class FiledReport:
    report_id: str
    written_at: float
    formats: tuple[str, ...]


def filed_reports(data_dir: Path) -> list[FiledReport]:
    """Every report in <data>/reports/, newest first, with the formats filed of each."""
    folder = data_dir / REPORTS_DIR
    found: dict[str, set[str]] = {}
    if folder.is_dir():
        for path in folder.iterdir():
            fmt = path.suffix.removeprefix(".")
            if fmt in FORMATS and written_at(path.stem) is not None and path.is_file():
                found.setdefault(path.stem, set()).add(fmt)
    reports = [
        FiledReport(name, written_at(name) or 0.0, tuple(f for f in FORMATS if f in formats))
        for name, formats in found.items()
    ]
    return sorted(reports, key=lambda r: r.written_at, reverse=True)


def read_report(data_dir: Path, report: str, fmt: str) -> tuple[FiledReport, str, str]:
    """(the report, the format read, its text): `report` empty for the newest, `fmt` empty for
    HTML when filed, else Markdown."""
    if report and written_at(report) is None:
        raise BadReportRequest(f"{report!r} is no report id: give one as listed, e.g. compliance-2026-12-05T020000Z")
    if fmt and fmt not in TEXT_FORMATS:
        raise BadReportRequest(f"format {fmt!r}: the console reads html or md")
    reports = filed_reports(data_dir)
    if not reports:
        raise NoSuchReport(f"no report is filed yet in <data>/{REPORTS_DIR}/ (`parley up` files one a day)")
    chosen = reports[0] if not report else next((r for r in reports if r.report_id == report), None)
    if chosen is None:
        raise NoSuchReport(f"no report {report} is filed")
    readable = [f for f in TEXT_FORMATS if f in chosen.formats and (not fmt or f == fmt)]
    if not readable:
        raise NoSuchReport(f"{chosen.report_id} is filed as {', '.join(chosen.formats)}, not as {fmt or 'html or md'}")
    path = data_dir / REPORTS_DIR / f"{chosen.report_id}.{readable[0]}"
    return chosen, readable[0], path.read_text(encoding="utf-8", errors="replace")
