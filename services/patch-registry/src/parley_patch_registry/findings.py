"""Which running instances are vulnerable, how urgently, and by when they must be fixed.

Severity comes from the advisory's CVSS vector, scored by the `cvss` library (v3.x and v4.0);
the priority sets a remediation deadline counted from when the registry first saw the
service affected (by that advisory, in that package: whichever instance or version). Advisories
without a CVSS vector (most PYSEC records) are given the `unscored` priority, whose deadline is
configurable like the others: unknown is not low.

A detection and a fix are events (FindingDetected, FindingFixed) on the registry's PATCH stream,
so the clock, the deadline and the time to patch survive restarts: the book decides which events
a look at the fleet makes (`observe`) and is rebuilt from them (`apply`). Pure: the fleet and the
clock are passed in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from cvss import CVSS3, CVSS4
from cvss.exceptions import CVSSError

from parley_patch_registry.advisories import PYPI, Advisory, AffectedPackage, affects, fixed_versions

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


# What a finding's clock belongs to: a service affected by an advisory in a package. Not the
# instance nor the version: a roll-out to a version still affected, or a restart that gives every
# instance a new id, leaves the service exposed, and its deadline where it was.
Exposure = tuple[str, str, str]  # (advisory id, service, package)


# ---- events (past tense) ----------------------------------------------------------------------


@dataclass(frozen=True)
class FindingEvent:
    advisory_id: str
    service: str
    package: str

    @property
    def exposure(self) -> Exposure:
        return (self.advisory_id, self.service, self.package)


@dataclass(frozen=True)
class FindingDetected(FindingEvent):
    """The service was first seen affected, on this instance at this version."""

    instance_id: str
    host: str
    installed_version: str
    priority: str
    detected_at: float  # unix seconds
    deadline: float  # as the priority's deadline stood at detection


@dataclass(frozen=True)
class FindingFixed(FindingEvent):
    """The service runs and none of its live instances is affected; the instance and version
    are the last seen affected."""

    instance_id: str
    host: str
    installed_version: str
    detected_at: float
    fixed_at: float


# Which advisory affects what where: named alike in a Finding, the API's Finding and VulnerabilityOverdue.
AFFECTED_FIELDS = ("advisory_id", "service", "instance_id", "host", "package", "installed_version")


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

    @property
    def exposure(self) -> Exposure:
        return (self.advisory_id, self.service, self.package)

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


# Fixed findings kept in memory (newest); every fix stays on the PATCH stream and in the archive.
FIXED_KEPT = 10_000


@dataclass
class DeadlinePolicy:
    deadlines: Mapping[str, timedelta]

    @classmethod
    def default(cls) -> DeadlinePolicy:
        return cls(dict(DEFAULT_DEADLINES))

    def deadline(self, priority: str, detected_at: datetime) -> datetime:
        return detected_at + self.deadlines[priority]


def _instant(unix_seconds: float) -> datetime:
    return datetime.fromtimestamp(unix_seconds, UTC)


def _affected_entry(advisory: Advisory, package: str) -> AffectedPackage | None:
    return next((p for p in advisory.affected if p.ecosystem == PYPI and p.key == package), None)


class FindingBook:
    """Current findings, each an instance's view of an open exposure: the exposure's first
    detection (and so its deadline) holds for as long as the service stays affected, whichever
    instances and versions it runs meanwhile.

    The exposure ends, fixed, when the service has live instances again and none is affected (a
    roll-out replaced them, or they upgraded). A service with no live instance is not fixed, only
    unseen; nor is one whose advisory was withdrawn (its findings are not shown meanwhile).
    """

    def __init__(self, policy: DeadlinePolicy) -> None:
        self.policy = policy
        self._open: dict[Exposure, FindingDetected] = {}
        self._current: dict[tuple[str, str, str], Finding] = {}  # per instance, as last observed
        self._last_seen: dict[Exposure, Finding] = {}  # in memory: the instance to name in a fix
        self._fixed: deque[FixedFinding] = deque(maxlen=FIXED_KEPT)

    # -- projection --

    def apply(self, event: FindingEvent, advisory: Advisory | None) -> None:
        """One event from the stream; `advisory` as imported then (None if unknown). Idempotent:
        a detection of an open exposure, or a fix of a closed one, changes nothing."""
        if isinstance(event, FindingDetected):
            self._open.setdefault(event.exposure, event)
        elif isinstance(event, FindingFixed) and self._open.pop(event.exposure, None) is not None:
            self._last_seen.pop(event.exposure, None)
            detected = _instant(event.detected_at)
            shown = self._finding(
                advisory,
                event.exposure,
                instance_id=event.instance_id,
                host=event.host,
                installed_version=event.installed_version,
                detected_at=detected,
            )
            self._fixed.append(FixedFinding(shown, fixed_at=_instant(event.fixed_at)))

    def _finding(
        self,
        advisory: Advisory | None,
        exposure: Exposure,
        *,
        instance_id: str,
        host: str,
        installed_version: str,
        detected_at: datetime,
    ) -> Finding:
        advisory_id, service, package = exposure
        entry = _affected_entry(advisory, package) if advisory else None
        scored = score(advisory) if advisory else Score(value=None, priority="unscored", vector="")
        return Finding(
            advisory_id=advisory_id,
            aliases=advisory.aliases if advisory else (),
            summary=advisory.summary if advisory else "",
            service=service,
            instance_id=instance_id,
            host=host,
            package=package,
            installed_version=installed_version,
            fixed_in=tuple(fixed_versions(entry)) if entry else (),
            score=scored,
            detected_at=detected_at,
            deadline=self.policy.deadline(scored.priority, detected_at),
        )

    # -- decisions --

    def observe(
        self,
        advisories: Iterable[Advisory],
        installed: Iterable[InstalledPackage],
        now: datetime,
        *,
        fleet_complete: bool = True,
    ) -> list[FindingEvent]:
        """Matches the fleet against the advisories; returns the events that makes: a detection
        per exposure not open yet, a fix per open one that no live instance shows any more.

        `fleet_complete`: every live instance has been heard. Right after a start it is not, and
        an affected instance not heard yet would look fixed: no fix is decided until it is.
        """
        advisories = list(advisories)
        installed = list(installed)
        by_id = {a.id: a for a in advisories}
        current: dict[tuple[str, str, str], Finding] = {}
        for item in sorted(installed, key=lambda i: (i.service, i.instance_id, i.name, i.version)):
            for advisory in advisories:
                package = affects(advisory, ecosystem=PYPI, name=item.name, version=item.version)
                if package is None:
                    continue
                opened = self._open.get((advisory.id, item.service, package.key))
                found = self._finding(
                    advisory,
                    (advisory.id, item.service, package.key),
                    instance_id=item.instance_id,
                    host=item.host,
                    installed_version=item.version,
                    detected_at=_instant(opened.detected_at) if opened else now,
                )
                current[found.key] = replace(found, fixed_in=tuple(fixed_versions(package)))
        self._current = current
        events: list[FindingEvent] = []
        detecting: set[Exposure] = set()
        for found in current.values():
            self._last_seen[found.exposure] = found
            if found.exposure not in self._open and found.exposure not in detecting:
                detecting.add(found.exposure)
                events.append(
                    FindingDetected(
                        *found.exposure,
                        instance_id=found.instance_id,
                        host=found.host,
                        installed_version=found.installed_version,
                        priority=found.score.priority,
                        detected_at=now.timestamp(),
                        deadline=found.deadline.timestamp(),
                    )
                )
        if not fleet_complete:
            return events
        exposed = {f.exposure for f in current.values()}
        live_services = {item.service for item in installed}
        for exposure, detection in self._open.items():
            if exposure in exposed or detection.service not in live_services:
                continue
            known = by_id.get(detection.advisory_id)
            if known is None or known.is_withdrawn:
                continue  # withdrawn or unknown: nobody patched anything
            last = self._last_seen.get(exposure)
            events.append(
                FindingFixed(
                    *exposure,
                    instance_id=last.instance_id if last else detection.instance_id,
                    host=last.host if last else detection.host,
                    installed_version=last.installed_version if last else detection.installed_version,
                    detected_at=detection.detected_at,
                    fixed_at=now.timestamp(),
                )
            )
        return events

    def reconcile(
        self, advisories: Iterable[Advisory], installed: Iterable[InstalledPackage], now: datetime
    ) -> list[Finding]:
        """`observe` and `apply` at once, for a book that records its events nowhere else."""
        advisories = list(advisories)
        by_id = {a.id: a for a in advisories}
        for event in self.observe(advisories, installed, now):
            self.apply(event, by_id.get(event.advisory_id))
        return self.findings()

    def fixed(self, since: datetime | None = None) -> list[FixedFinding]:
        """Findings fixed (at or after `since`), oldest fix first."""
        return [f for f in self._fixed if since is None or f.fixed_at >= since]

    def findings(self) -> list[Finding]:
        """The instances' findings as last observed, each with its exposure's detection time."""
        shown = []
        for observed in self._current.values():
            opened = self._open.get(observed.exposure)
            if opened is None:
                shown.append(observed)
                continue
            detected = _instant(opened.detected_at)  # as recorded, by this registry or another
            deadline = self.policy.deadline(observed.score.priority, detected)
            shown.append(replace(observed, detected_at=detected, deadline=deadline))
        return sorted(shown, key=lambda f: (f.deadline, f.service, f.instance_id, f.advisory_id))

    def overdue(self, now: datetime) -> list[Finding]:
        return [f for f in self.findings() if f.overdue(now)]
