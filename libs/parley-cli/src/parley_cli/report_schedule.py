"""`parley up` writes a signed compliance report into <data>/reports/ every day (by default), as
Markdown and as an HTML page, so an auditor finds a dated one for any day the platform ran."""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPORT_EVERY_ENV = "PARLEY_REPORT_EVERY_HOURS"
DEFAULT_EVERY_HOURS = 24.0


def report_every() -> timedelta | None:
    """How often `parley up` writes a report; None when $PARLEY_REPORT_EVERY_HOURS is 0 (off)."""
    text = os.environ.get(REPORT_EVERY_ENV, "").strip()
    try:
        hours = float(text) if text else DEFAULT_EVERY_HOURS
    except ValueError:
        hours = -1.0
    if not 0 <= hours < math.inf:  # NaN and inf too
        raise RuntimeError(f"{REPORT_EVERY_ENV}={text!r}: give hours between reports (e.g. 24), or 0 for none")
    return timedelta(hours=hours) if hours else None


async def write_reports(data_dir: Path, every: timedelta, say: Callable[[str], None]) -> None:
    """A report after each period, covering that period; one that fails is said and the next is tried."""
    from parley_cli.report import write_report  # the report's gRPC stubs load only when one is due

    while True:
        await asyncio.sleep(every.total_seconds())
        now = datetime.now(UTC)
        try:
            written = await write_report(data_dir, since=now - every, now=now, html_too=True)
        except Exception as exc:  # a report is a record, not a reason to stop the platform
            say(f"compliance report not written: {exc}; the next in {every}")
            continue
        state = "audit chain intact" if written.audit_intact else "audit chain TAMPERED"
        files = ", ".join(str(p) for p in (written.path, *written.also))
        say(f"compliance report: {files} ({state}; `parley report verify` checks each)")
