"""The daily report's schedule: every moment the platform ran is in some report, across restarts
and failed reports (the decision is pure: `now` and the previous report's end in, a plan out)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

from parley_cli.report_schedule import SCHEDULE_START, next_report, previous_end
from parley_core.compliance_reports import REPORTS_DIR, report_id

DAY = timedelta(hours=24)
T0 = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)


def test_a_report_is_due_one_period_after_the_previous_one_ended_and_covers_since_then() -> None:
    plan = next_report(now=T0 + timedelta(hours=3), previous_end=T0, every=DAY)
    assert plan.due == T0 + DAY
    assert plan.since == T0


def test_a_restart_after_a_long_stop_files_one_at_once_for_the_gap() -> None:
    now = T0 + timedelta(days=3, hours=5)
    plan = next_report(now=now, previous_end=T0, every=DAY)
    assert plan.due == now  # not a period from the restart
    assert plan.since == T0  # the whole gap, not just the last period


def test_a_platform_restarted_more_often_than_a_period_still_files_reports_without_gaps() -> None:
    """Restarted every 20 h with a daily report: the old schedule (sleep a period, then report)
    never filed one; now each start asks the files where the last report ended."""
    end, covered, now = T0, [], T0
    for _ in range(6):
        restart = now + timedelta(hours=20)
        while True:  # one run of the platform, from `now` until `restart`
            plan = next_report(now=now, previous_end=end, every=DAY)
            if plan.due >= restart:
                break
            covered.append((plan.since, plan.due))
            end = now = plan.due
        now = restart
    assert len(covered) >= 4
    assert covered[0][0] == T0
    assert all(a[1] == b[0] for a, b in itertools.pairwise(covered))  # no gap, no overlap


def test_a_failed_report_is_folded_into_the_next(tmp_path: Path) -> None:
    # The write failed: nothing was filed, so the previous end is still the last filed report's.
    previous = T0 + DAY
    _file(tmp_path, previous)
    retry_at = T0 + 2 * DAY + timedelta(minutes=5)
    plan = next_report(now=retry_at, previous_end=previous_end(tmp_path, retry_at), every=DAY)
    assert plan.due == retry_at
    assert plan.since == previous


def test_the_previous_end_is_the_newest_filed_reports_time(tmp_path: Path) -> None:
    _file(tmp_path, T0)
    _file(tmp_path, T0 + DAY)
    assert previous_end(tmp_path, T0 + 2 * DAY) == T0 + DAY


def test_before_any_report_the_schedule_counts_from_its_first_run(tmp_path: Path) -> None:
    assert previous_end(tmp_path, T0) == T0
    assert (tmp_path / REPORTS_DIR / SCHEDULE_START).is_file()
    assert previous_end(tmp_path, T0 + timedelta(hours=30)) == T0  # a restart keeps the first run's time
    plan = next_report(now=T0 + timedelta(hours=30), previous_end=T0, every=DAY)
    assert plan.due == T0 + timedelta(hours=30)


def _file(data_dir: Path, at: datetime) -> None:
    folder = data_dir / REPORTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{report_id(at)}.md").write_text("# Parley compliance report\n")
