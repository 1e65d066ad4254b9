"""Which running instances are vulnerable, how urgently, and by when they must be fixed.

Severity comes from the advisory's CVSS vector, scored by the `cvss` library (v3.x and v4.0);
the priority sets a remediation deadline counted from when the registry first saw the
instance affected. Advisories without a CVSS vector (most PYSEC records) are given the
`unscored` priority, whose deadline is configurable like the others: unknown is not low.
Pure: the fleet and the clock are passed in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from cvss import CVSS3, CVSS4
from cvss.exceptions import CVSSError

from parley_patch_registry.advisories import PYPI, Advisory, affects, fixed_versions

PRIORITIES = ("critical", "high", "medium", "low", "unscored")

DEFAULT_DEADLINES: Mapping[str, timedelta] = {
    "critical": timedelta(hours=24),
    "high": timedelta(days=7),
    "medium": timedelta(days=30),
    "low": timedelta(days=90),
    "unscored": timedelta(days=30),
}


@dataclass(frozen=True)
class Score:
    value: float | None
    priority: str
    vector: str


def score(advisory: Advisory) -> Score:
    """The highest CVSS base score among the advisory's vectors (v4 and v3 both count)."""
    best: Score | None = None
    for severity in advisory.severity:
        try:
            if severity.type == "CVSS_V4":
                v4 = CVSS4(severity.vector)
                value, name = float(v4.base_score), str(v4.severity)
            elif severity.type == "CVSS_V3":
                v3 = CVSS3(severity.vector)
                value, name = float(v3.scores()[0]), str(v3.severities()[0])
            else:
                continue
        except CVSSError:
            continue  # a malformed vector is not a score; the advisory stays `unscored`
        priority = "low" if name.lower() == "none" else name.lower()
        if best is None or best.value is None or value > best.value:
            best = Score(value=value, priority=priority, vector=severity.vector)
    return best or Score(value=None, priority="unscored", vector="")


@dataclass(frozen=True)
class InstalledPackage:
    """One instance of one service, and one distribution it reported (the service's own too)."""

    service: str
    instance_id: str
    host: str
    name: str
    version: str


@dataclass(frozen=True)
class Finding:
    advisory_id: str
    aliases: tuple[str, ...]
    summary: str
    service: str
    instance_id: str
    host: str
    package: str
    installed_version: str
    fixed_in: tuple[str, ...]
    score: Score
    detected_at: datetime
    deadline: datetime

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.advisory_id, self.instance_id, self.package)

    def overdue(self, now: datetime) -> bool:
        return now > self.deadline


@dataclass(frozen=True)
class FixedFinding:
    """A finding that ended because the service stopped being vulnerable: `finding` is how it
    was last seen, its `detected_at` when the service was first seen affected by that advisory in
    that package (whichever instance), `fixed_at` when none of its live instances was any more."""

    finding: Finding
    fixed_at: datetime

    @property
    def time_to_patch(self) -> timedelta:
        return self.fixed_at - self.finding.detected_at


# Fixed findings kept (newest): they live in memory, like the open findings they came from.
FIXED_KEPT = 10_000


@dataclass
class DeadlinePolicy:
    deadlines: Mapping[str, timedelta]

    @classmethod
    def default(cls) -> DeadlinePolicy:
        return cls(dict(DEFAULT_DEADLINES))

    def deadline(self, priority: str, detected_at: datetime) -> datetime:
        return detected_at + self.deadlines[priority]


class FindingBook:
    """Current findings; a finding keeps its first detection time (and so its deadline) for as
    long as the instance stays affected, and disappears when it is fixed or stops existing.

    Beside them it follows each exposure, a service affected by an advisory in a package, from
    its first finding on any instance: the exposure ends, fixed, when the service has live
    instances again and none is affected (the roll-out replaced them, or they upgraded). A service
    with no live instance is not fixed, only unseen; an advisory withdrawn or gone ends nothing.
    """

    def __init__(self, policy: DeadlinePolicy) -> None:
        self.policy = policy
        self._findings: dict[tuple[str, str, str], Finding] = {}
        self._exposures: dict[tuple[str, str, str], Finding] = {}  # (advisory, service, package)
        self._fixed: deque[FixedFinding] = deque(maxlen=FIXED_KEPT)

    def reconcile(
        self, advisories: Iterable[Advisory], installed: Iterable[InstalledPackage], now: datetime
    ) -> list[Finding]:
        current: dict[tuple[str, str, str], Finding] = {}
        advisories = list(advisories)
        for item in installed:
            for advisory in advisories:
                package = affects(advisory, ecosystem=PYPI, name=item.name, version=item.version)
                if package is None:
                    continue
                key = (advisory.id, item.instance_id, package.key)
                previous = self._findings.get(key)
                detected = previous.detected_at if previous else now
                scored = score(advisory)
                current[key] = Finding(
                    advisory_id=advisory.id,
                    aliases=advisory.aliases,
                    summary=advisory.summary,
                    service=item.service,
                    instance_id=item.instance_id,
                    host=item.host,
                    package=package.key,
                    installed_version=item.version,
                    fixed_in=tuple(fixed_versions(package)),
                    score=scored,
                    detected_at=detected,
                    deadline=self.policy.deadline(scored.priority, detected),
                )
        self._findings = current
        self._follow_exposures(current.values(), {a.id for a in advisories if not a.is_withdrawn}, installed, now)
        return self.findings()

    def _follow_exposures(
        self, current: Iterable[Finding], active: set[str], installed: Iterable[InstalledPackage], now: datetime
    ) -> None:
        for finding in current:
            key = (finding.advisory_id, finding.service, finding.package)
            first = self._exposures.get(key)
            detected = min(first.detected_at, finding.detected_at) if first else finding.detected_at
            self._exposures[key] = replace(finding, detected_at=detected)
        exposed = {(f.advisory_id, f.service, f.package) for f in current}
        live_services = {item.service for item in installed}
        for key, last in list(self._exposures.items()):
            if key in exposed:
                continue
            if last.advisory_id not in active:
                del self._exposures[key]  # withdrawn or gone: nobody patched anything
            elif last.service in live_services:
                del self._exposures[key]
                self._fixed.append(FixedFinding(last, fixed_at=now))

    def fixed(self, since: datetime | None = None) -> list[FixedFinding]:
        """Findings fixed (at or after `since`), oldest fix first."""
        return [f for f in self._fixed if since is None or f.fixed_at >= since]

    def findings(self) -> list[Finding]:
        return sorted(self._findings.values(), key=lambda f: (f.deadline, f.service, f.instance_id, f.advisory_id))

    def overdue(self, now: datetime) -> list[Finding]:
        return [f for f in self.findings() if f.overdue(now)]
