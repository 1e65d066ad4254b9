"""OSV range evaluation where events share a version, and `limit` in ECOSYSTEM ranges (issue 20).

Records of their own, so these run without the shared OSV data set."""

from __future__ import annotations

from typing import Any

import pytest

from parley_patch_registry.advisories import affects, parse_advisory


def pypi_range(*events: dict[str, str], kind: str = "ECOSYSTEM", ecosystem: str = "PyPI") -> Any:
    return parse_advisory(
        {
            "id": "TEST-RANGE",
            "modified": "2026-01-01T00:00:00Z",
            "affected": [
                {"package": {"ecosystem": ecosystem, "name": "pkg"}, "ranges": [{"type": kind, "events": list(events)}]}
            ],
        }
    )


def hit(advisory: Any, version: str, ecosystem: str = "PyPI") -> bool:
    return affects(advisory, ecosystem=ecosystem, name="pkg", version=version) is not None


@pytest.mark.parametrize("version", ["0.9", "1.0", "1.0.1", "2.0", "10.0"])
def test_introduced_and_fixed_at_one_version_affect_nothing(version: str) -> None:
    assert not hit(pypi_range({"introduced": "1.0"}, {"fixed": "1.0"}), version)
    # The order the record lists them in does not matter.
    assert not hit(pypi_range({"fixed": "1.0"}, {"introduced": "1.0"}), version)


def test_introduced_and_last_affected_at_one_version_affect_that_version_only() -> None:
    advisory = pypi_range({"introduced": "1.0"}, {"last_affected": "1.0"})
    assert [hit(advisory, v) for v in ("0.9", "1.0", "1.0.1")] == [False, True, False]


@pytest.mark.parametrize(
    ("version", "affected"),
    [("0.9", False), ("1.0", True), ("1.5", True), ("2.0", True), ("2.5", True), ("3.0", False), ("3.1", False)],
)
def test_back_to_back_ranges(version: str, affected: bool) -> None:
    advisory = pypi_range({"introduced": "1.0"}, {"fixed": "2.0"}, {"introduced": "2.0"}, {"fixed": "3.0"})
    assert hit(advisory, version) is affected
    semver_record = pypi_range(
        {"introduced": "1.0.0"},
        {"fixed": "2.0.0"},
        {"introduced": "2.0.0"},
        {"fixed": "3.0.0"},
        kind="SEMVER",
        ecosystem="npm",
    )
    assert hit(semver_record, version + ".0", ecosystem="npm") is affected


def test_a_gap_between_ranges_is_not_affected() -> None:
    advisory = pypi_range({"introduced": "1.0"}, {"fixed": "1.5"}, {"introduced": "2.0"}, {"fixed": "3.0"})
    assert [hit(advisory, v) for v in ("1.2", "1.5", "1.9", "2.0", "3.0")] == [True, False, False, True, False]


@pytest.mark.parametrize(
    ("version", "affected"),
    [("0.5", False), ("1.0", True), ("1.9.9", True), ("2.0", False), ("2.0.1", False), ("5.0", False)],
)
def test_limit_bounds_an_ecosystem_range(version: str, affected: bool) -> None:
    advisory = pypi_range({"introduced": "1.0"}, {"limit": "2.0"})
    assert hit(advisory, version) is affected


def test_limit_star_and_several_limits() -> None:
    assert hit(pypi_range({"introduced": "0"}, {"limit": "*"}), "99.0")
    # Below any one of the limits is enough (OSV: each limit bounds the range from above).
    several = pypi_range({"introduced": "0"}, {"limit": "2.0"}, {"limit": "3.0"})
    assert [hit(several, v) for v in ("1.0", "2.5", "3.0")] == [True, True, False]
