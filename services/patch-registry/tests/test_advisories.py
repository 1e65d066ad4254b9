"""OSV matching over the 30 real PyPA records in /work/shared/data/osv, edge case by edge case."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from parley_core.errors import InvalidArgument
from parley_patch_registry import codec
from parley_patch_registry.advisories import Advisory, affects, load_advisories, parse_advisory
from parley_patch_registry.findings import (
    DeadlinePolicy,
    FindingBook,
    FindingDetected,
    FindingEvent,
    FindingFixed,
    InstalledPackage,
    score,
)
from parley_testing.osv import messaging_osv

# The shared OSV test data: $PARLEY_OSV_DIR, else shared/ beside the clone (as CI has it).
_REPO = Path(__file__).resolve().parents[3]
OSV_DIR = next(
    (
        p
        for p in (Path(os.environ.get("PARLEY_OSV_DIR") or "/nonexistent"), _REPO.parent / "shared" / "data" / "osv")
        if p.is_dir()
    ),
    Path("/work/shared/data/osv"),
)

pytestmark = pytest.mark.skipif(not OSV_DIR.is_dir(), reason=f"OSV test data not found at {OSV_DIR}")


@pytest.fixture(scope="module")
def osv() -> dict[str, Advisory]:
    return {a.id: a for a in load_advisories(OSV_DIR)}


def hit(advisory: Advisory, name: str, version: str) -> bool:
    return affects(advisory, ecosystem="PyPI", name=name, version=version) is not None


def test_whole_folder_imports(osv: dict[str, Advisory]) -> None:
    assert len(osv) == 30


@pytest.mark.parametrize(
    ("record", "name", "version", "expected"),
    [
        # intro 0 / fixed; pre-release of the fixed version sorts before it (PEP 440)
        ("PYSEC-2021-142", "PyYAML", "5.3.1", True),
        ("PYSEC-2021-142", "pyyaml", "5.4b2", True),
        ("PYSEC-2021-142", "pyyaml", "5.4", False),
        ("PYSEC-2021-142", "pyyaml", "3.01", True),  # zero-padded, == 3.1
        # intro > 0: below introduced is safe, even though the GIT range starts at 0
        ("PYSEC-2017-98", "urllib3", "1.16", False),
        ("PYSEC-2017-98", "urllib3", "1.17", True),
        ("PYSEC-2017-98", "urllib3", "1.18.1", False),
        ("PYSEC-2022-42980", "pillow", "9.1.9", False),
        ("PYSEC-2022-42980", "Pillow", "9.2.0", True),
        ("PYSEC-2023-11", "cryptography", "1.7", False),
        ("PYSEC-2023-11", "cryptography", "39.0.0", True),
        # fixed version is a pre-release
        ("PYSEC-2020-176", "pyyaml", "5.2a1", True),
        ("PYSEC-2020-176", "pyyaml", "5.2b1", False),
        ("PYSEC-2020-176", "pyyaml", "5.0", False),
        # last_affected: inclusive upper bound
        ("PYSEC-2023-120", "aiohttp", "3.8.4", True),
        ("PYSEC-2023-120", "aiohttp", "3.8.5", False),
        # two pairs with a gap, unsorted events
        ("PYSEC-2023-62", "flask", "2.2.4", True),
        ("PYSEC-2023-62", "flask", "2.2.5", False),
        ("PYSEC-2023-62", "flask", "2.2.9", False),
        ("PYSEC-2023-62", "flask", "2.3.1", True),
        ("PYSEC-2023-62", "flask", "2.3.2", False),
        ("PYSEC-2023-192", "urllib3", "1.26.16", True),
        ("PYSEC-2023-192", "urllib3", "1.26.17", False),
        ("PYSEC-2023-192", "urllib3", "2.0.5", True),
        ("PYSEC-2023-192", "urllib3", "2.0.6", False),
        ("PYSEC-2023-212", "urllib3", "1.26.18", False),
        ("PYSEC-2023-212", "urllib3", "2.0.6", True),
        # calendar versions, 4-part, introduced spelled differently from the listed version
        ("PYSEC-2022-42986", "certifi", "2020.4.5.1", True),
        ("PYSEC-2022-42986", "certifi", "2017.11.4", False),
        ("PYSEC-2023-135", "certifi", "2015.04.28", True),
        ("PYSEC-2023-135", "certifi", "2023.7.22", False),
        # explicit versions outside the range still count (record published inconsistent)
        ("PYSEC-2023-177", "gevent", "23.9.0.post1", True),
        ("PYSEC-2023-177", "gevent", "23.9.1", False),
        # `c` pre-release spelling, local post release
        ("PYSEC-2022-43012", "setuptools", "0.6c11", True),
        ("PYSEC-2022-43012", "setuptools", "65.5.1", False),
        # no versions list, no aliases
        ("PYSEC-2023-175", "pillow", "10.0.0", True),
        ("PYSEC-2023-175", "pillow", "10.0.1", False),
        # another package never matches
        ("PYSEC-2023-175", "pillow-simd", "1.0", False),
        # 3.1.0.rc1 == 3.1.0rc1
        ("PYSEC-2023-227", "pillow", "3.1.0rc1", True),
        ("PYSEC-2023-227", "pillow", "10.0.0", False),
    ],
)
def test_range_and_version_matching(
    osv: dict[str, Advisory], record: str, name: str, version: str, expected: bool
) -> None:
    assert hit(osv[record], name, version) is expected


def test_withdrawn_record_never_matches(osv: dict[str, Advisory]) -> None:
    withdrawn = osv["PYSEC-2022-43059"]
    assert withdrawn.is_withdrawn
    assert not hit(withdrawn, "aiohttp", "3.8.1")
    # the same record without `withdrawn` would match: its open-ended range covers everything
    raw = json.loads((OSV_DIR / "PYSEC-2022-43059.json").read_text())
    del raw["withdrawn"]
    assert hit(parse_advisory(raw), "aiohttp", "99.0")


def test_aliases_are_kept(osv: dict[str, Advisory]) -> None:
    assert any(a.startswith("SNYK-") for a in osv["PYSEC-2021-66"].aliases)
    assert osv["PYSEC-2023-175"].aliases == ()


def test_semver_range_and_limit() -> None:
    record = {
        "id": "TEST-1",
        "modified": "2026-01-01T00:00:00Z",
        "affected": [
            {
                "package": {"ecosystem": "npm", "name": "left-pad"},
                "ranges": [{"type": "SEMVER", "events": [{"introduced": "1.0.0"}, {"fixed": "1.2.0-rc.1"}]}],
            },
            {
                "package": {"ecosystem": "PyPI", "name": "limited"},
                "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"limit": "2.0"}]}],
            },
        ],
    }
    advisory = parse_advisory(record)
    assert affects(advisory, ecosystem="npm", name="left-pad", version="1.1.9")
    assert affects(advisory, ecosystem="npm", name="left-pad", version="1.2.0-beta.1")  # beta < rc
    assert not affects(advisory, ecosystem="npm", name="left-pad", version="1.2.0")
    assert not affects(advisory, ecosystem="npm", name="left-pad", version="0.9.0")
    assert affects(advisory, ecosystem="PyPI", name="limited", version="1.9")
    assert not affects(advisory, ecosystem="PyPI", name="limited", version="2.0")


def test_bad_records_are_refused_with_a_reason(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="lacks required field 'id'"):
        parse_advisory({"modified": "x"})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InvalidArgument, match="not readable OSV JSON"):
        load_advisories(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgument, match="no OSV JSON files"):
        load_advisories(tmp_path / "empty")


def test_cvss_sets_priority(osv: dict[str, Advisory]) -> None:
    assert score(osv["PYSEC-2023-192"]).priority == "high"  # 8.1
    assert score(osv["PYSEC-2023-212"]).priority == "medium"  # 4.4
    assert score(osv["PYSEC-2023-250"]).priority == "medium"  # 5.3
    assert score(osv["PYSEC-2023-228"]).priority == "low"  # 3.3
    assert score(osv["PYSEC-2021-142"]).priority == "unscored"
    v4 = parse_advisory(
        {
            "id": "TEST-V4",
            "modified": "x",
            "severity": [
                {"type": "CVSS_V4", "score": "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N"}
            ],
        }
    )
    assert score(v4).priority == "critical"


def test_findings_over_a_fleet_with_deadlines_and_overdue(osv: dict[str, Advisory]) -> None:
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    fleet = [
        InstalledPackage("messaging", "m-1", "h1", "parley-messaging", "0.1.0"),
        InstalledPackage("messaging", "m-1", "h1", "urllib3", "2.0.5"),  # 2023-192 high, 2023-212 medium
        InstalledPackage("auth", "a-1", "h1", "urllib3", "2.0.7"),  # fixed for both
        InstalledPackage("auth", "a-1", "h1", "pyyaml", "5.3"),  # 2021-142 unscored
    ]
    book = FindingBook(DeadlinePolicy.default())
    findings = book.reconcile(osv.values(), fleet, t0)
    keys = {(f.advisory_id, f.instance_id) for f in findings}
    assert keys == {("PYSEC-2023-192", "m-1"), ("PYSEC-2023-212", "m-1"), ("PYSEC-2021-142", "a-1")}
    high = next(f for f in findings if f.advisory_id == "PYSEC-2023-192")
    assert high.deadline == t0 + timedelta(days=7)
    assert high.fixed_in == ("2.0.6", "1.26.17")
    # a later reconcile keeps the first detection time, so the deadline does not move
    later = t0 + timedelta(days=8)
    book.reconcile(osv.values(), fleet, later)
    assert [f.advisory_id for f in book.overdue(later)] == ["PYSEC-2023-192"]
    # once fixed, the finding is gone
    fleet[1] = InstalledPackage("messaging", "m-1", "h1", "urllib3", "2.0.7")
    assert {f.advisory_id for f in book.reconcile(osv.values(), fleet, later)} == {"PYSEC-2021-142"}


def test_deadlines_are_configurable(osv: dict[str, Advisory]) -> None:
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    policy = DeadlinePolicy.default()
    policy.deadlines = {**policy.deadlines, "high": timedelta(hours=1)}
    book = FindingBook(policy)
    [finding] = book.reconcile([osv["PYSEC-2023-192"]], [InstalledPackage("m", "m-1", "h", "urllib3", "1.26.0")], t0)
    assert finding.deadline == t0 + timedelta(hours=1)


def test_an_exposure_is_fixed_only_when_the_live_service_is_no_longer_affected() -> None:
    record = messaging_osv("TEST-FIX-1", "0.2.0")
    advisory = parse_advisory(record)
    book = FindingBook(DeadlinePolicy.default())
    t0 = datetime(2026, 12, 1, tzinfo=UTC)

    def running(instance: str, version: str) -> list[InstalledPackage]:
        return [InstalledPackage("messaging", instance, "h", "parley-messaging", version)]

    assert [f.instance_id for f in book.reconcile([advisory], running("m-1", "0.1.0"), t0)] == ["m-1"]
    # m-1 replaced by m-2 still vulnerable: the exposure goes on (from t0), nothing is fixed
    book.reconcile([advisory], running("m-2", "0.1.5"), t0 + timedelta(hours=1))
    # the service silent (no live instance): unseen, not fixed
    assert book.reconcile([advisory], [], t0 + timedelta(hours=2)) == []
    assert book.fixed() == []
    # a fixed version runs: fixed, its time to patch counted from the first detection
    book.reconcile([advisory], running("m-3", "0.2.0"), t0 + timedelta(hours=5))
    [fixed] = book.fixed()
    assert (fixed.finding.instance_id, fixed.finding.installed_version) == ("m-2", "0.1.5")
    assert fixed.time_to_patch == timedelta(hours=5)
    assert book.fixed(since=t0 + timedelta(hours=6)) == []
    # a withdrawn advisory's findings end without being fixed
    book.reconcile([advisory], running("m-4", "0.1.0"), t0 + timedelta(hours=7))
    withdrawn = parse_advisory({**record, "modified": "2026-12-02T00:00:00Z", "withdrawn": "2026-12-02T00:00:00Z"})
    assert book.reconcile([withdrawn], running("m-4", "0.1.0"), t0 + timedelta(hours=8)) == []
    book.reconcile([withdrawn], running("m-5", "0.2.0"), t0 + timedelta(hours=9))
    assert len(book.fixed()) == 1, "only the patched exposure counts"


def test_a_book_rebuilt_from_its_events_has_the_same_clocks_and_fixes() -> None:
    """What a restart does: the events a book decided (through their protobuf form) make a fresh
    book with the same detection times, deadlines and times to patch; nothing is decided twice."""
    advisory = parse_advisory(messaging_osv("TEST-REPLAY-1", "0.3.0"))
    book = FindingBook(DeadlinePolicy.default())
    stream: list[FindingEvent] = []
    t0 = datetime(2026, 12, 1, tzinfo=UTC)

    def look(book: FindingBook, instance: str, version: str, at: datetime, *, complete: bool = True) -> None:
        running = [InstalledPackage("messaging", instance, "h", "parley-messaging", version)]
        for event in book.observe([advisory], running, at, fleet_complete=complete):
            replayed = codec.from_proto(codec.to_proto(event))
            assert replayed == event
            stream.append(event)
            book.apply(event, advisory)

    look(book, "m-1", "0.1.0", t0)
    look(book, "m-1", "0.1.0", t0 + timedelta(hours=1))  # seen again: nothing new
    look(book, "m-2", "0.2.0", t0 + timedelta(hours=2))  # a roll-out to a version still affected
    assert [type(e) for e in stream] == [FindingDetected]
    [moved] = book.findings()
    assert (moved.instance_id, moved.detected_at) == ("m-2", t0)

    fresh = FindingBook(DeadlinePolicy.default())
    for event in stream:
        fresh.apply(event, advisory)
    fresh.apply(stream[0], advisory)  # a detection replayed twice changes nothing
    look(fresh, "m-3", "0.2.0", t0 + timedelta(hours=3))  # after a restart, a new instance id
    assert [type(e) for e in stream] == [FindingDetected], "the restarted book records no new detection"
    [kept] = fresh.findings()
    assert (kept.instance_id, kept.detected_at, kept.deadline) == ("m-3", t0, moved.deadline)

    look(fresh, "m-4", "0.3.0", t0 + timedelta(hours=4), complete=False)  # not every instance heard yet
    assert fresh.fixed() == [], "no fix is decided before the whole fleet was heard"
    look(fresh, "m-4", "0.3.0", t0 + timedelta(hours=5))
    assert [type(e) for e in stream] == [FindingDetected, FindingFixed]
    again = FindingBook(DeadlinePolicy.default())
    for event in stream:
        again.apply(event, advisory)
    [fixed] = again.fixed()
    assert fixed.time_to_patch == timedelta(hours=5)
    assert (fixed.finding.instance_id, fixed.finding.installed_version, fixed.finding.summary) == (
        "m-3",
        "0.2.0",
        "messaging before 0.3.0",
    )
    assert again.findings() == []
    assert again.fixed() == fresh.fixed()
