"""`parley up` writes a signed compliance report into <data>/reports/ every day (by default), as
Markdown and as an HTML page, so an auditor finds a dated one for any day the platform ran.

Reports cover time without gaps: each covers from the end of the newest filed report (its id is
the time it was written, i.e. where it ended) to now. A platform restarted more often than once a
period still files one when a period has passed since the last; a restart after a longer stop files
one at once for the gap; a report that fails is tried again and its period goes into that one.
Before the first report, the time the schedule first ran (a small record beside the reports)
stands in for "the end of the previous one". The decision (`next_report`) is pure."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from parley_core.compliance_reports import REPORTS_DIR, filed_reports
from parley_core.jobs import PeriodicJob, every

REPORT_EVERY_ENV = "PARLEY_REPORT_EVERY_HOURS"
DEFAULT_EVERY_HOURS = 24.0
# When the schedule first ran in this data folder: the start of the first report's period.
SCHEDULE_START = ".schedule-started"
RETRY_AFTER = timedelta(minutes=5)  # after a failed report, at most this long until it is tried again


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


@dataclass(frozen=True)
class NextReport:
    due: datetime  # when to write it (now or later)
    since: datetime  # the start of the period it covers; it ends when it is written


def next_report(*, now: datetime, previous_end: datetime, every: timedelta) -> NextReport:
    """The next report covers from where the previous one ended; it is due one period after that,
    at once when that time has passed (a restart after a stop, a failed report made up)."""
    return NextReport(due=max(now, previous_end + every), since=previous_end)


def previous_end(data_dir: Path, now: datetime) -> datetime:
    """Where the newest filed report ended (the time in its id), else when the schedule first ran
    here (recorded now on the first run)."""
    reports = filed_reports(data_dir)
    if reports:
        return datetime.fromtimestamp(reports[0].written_at, UTC)
    record = data_dir / REPORTS_DIR / SCHEDULE_START
    try:
        return datetime.fromisoformat(record.read_text().strip())
    except (OSError, ValueError):
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(now.isoformat() + "\n")
        return now


def report_job(
    data_dir: Path,
    period: timedelta,
    say: Callable[[str], None],
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> PeriodicJob:
    """Each report when due, covering since the previous one; one that fails is said and tried again
    (within RETRY_AFTER), its period going into the next one."""

    def plan() -> tuple[datetime, NextReport]:
        now = clock()
        return now, next_report(now=now, previous_end=previous_end(data_dir, now), every=period)

    def until_due() -> float:
        now, upcoming = plan()
        return (upcoming.due - now).total_seconds()

    async def write_if_due() -> None:
        from parley_cli.report import write_report  # the report's gRPC stubs load only when one is due

        now, upcoming = plan()
        if upcoming.due > now:
            return
        # Report ids are whole seconds: end there, so the next one starts exactly where this ends.
        end = max(clock().replace(microsecond=0), upcoming.since + timedelta(seconds=1))
        try:
            written = await write_report(data_dir, since=upcoming.since, now=end, html_too=True)
        except Exception as exc:  # a report is a record, not a reason to stop the platform
            say(f"compliance report not written: {exc}; tried again in {retry}, covering this period too")
            raise
        state = "audit chain intact" if written.audit_intact else "audit chain TAMPERED"
        files = ", ".join(str(p) for p in (written.path, *written.also))
        say(f"compliance report: {files} ({state}; `parley report verify` checks each)")

    retry = min(period, RETRY_AFTER)
    return every(until_due, write_if_due, name="compliance-reports", after_failure=retry.total_seconds())
