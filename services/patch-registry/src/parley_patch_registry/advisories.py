"""OSV advisories and whether an installed version is affected by them.

Follows the OSV schema's own evaluation algorithm (ossf.github.io/osv-schema, "Evaluation"):
events of a range are sorted by version, walked in order, `introduced` opens, `fixed` closes at
that version, `last_affected` closes after it, and `limit` events bound the range from above.
ECOSYSTEM ranges of PyPI packages are ordered by PEP 440 (`packaging`), SEMVER ranges by
SemVer 2.0 (`semver`); GIT ranges name commits, which an installed wheel cannot be compared to,
so they are ignored, as pip-audit does. Pure: no I/O beyond parsing the JSON it is handed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import semver
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from parley_core.errors import InvalidArgument

PYPI = "PyPI"


@dataclass(frozen=True)
class RangeEvent:
    kind: str  # introduced | fixed | last_affected | limit
    version: str


@dataclass(frozen=True)
class VersionRange:
    type: str  # ECOSYSTEM | SEMVER | GIT
    events: tuple[RangeEvent, ...]


@dataclass(frozen=True)
class AffectedPackage:
    ecosystem: str
    name: str
    ranges: tuple[VersionRange, ...]
    versions: tuple[str, ...]

    @property
    def key(self) -> str:
        """PEP 503 normalised for PyPI, so `PyYAML`, `pyyaml` and `py_yaml` meet."""
        return canonicalize_name(self.name) if self.ecosystem == PYPI else self.name


@dataclass(frozen=True)
class Severity:
    type: str  # CVSS_V3 | CVSS_V4 | ...
    vector: str


@dataclass(frozen=True)
class Advisory:
    id: str
    modified: str
    summary: str
    aliases: tuple[str, ...]
    withdrawn: str | None
    affected: tuple[AffectedPackage, ...]
    severity: tuple[Severity, ...] = field(default=())

    @property
    def is_withdrawn(self) -> bool:
        return self.withdrawn is not None


class _Comparator:
    """Orders versions of one range type; None means 'cannot be ordered' (skipped, not guessed)."""

    def __init__(self, parse: Callable[[str], Any]) -> None:
        self._parse = parse

    def parse(self, text: str) -> Any | None:
        try:
            return self._parse(text)
        except (InvalidVersion, ValueError, TypeError):
            return None


@lru_cache(maxsize=65536)
def _parse_semver(text: str) -> semver.Version:
    return semver.Version.parse(text.removeprefix("v"))


@lru_cache(maxsize=65536)
def _pep440(text: str) -> Version:
    """Cached: the fleet is matched against every advisory again and again, with the same strings."""
    return Version(text)


_COMPARATORS = {"ECOSYSTEM": _Comparator(_pep440), "SEMVER": _Comparator(_parse_semver)}


def parse_advisory(record: dict[str, Any]) -> Advisory:
    """One OSV record as a value; refuses records that lack what matching needs."""
    try:
        advisory_id = str(record["id"])
        modified = str(record["modified"])
    except KeyError as missing:
        raise InvalidArgument(f"OSV record lacks required field {missing}") from None
    affected: list[AffectedPackage] = []
    for entry in record.get("affected", []):
        package = entry.get("package") or {}
        if "name" not in package or "ecosystem" not in package:
            raise InvalidArgument(f"{advisory_id}: an affected entry has no package name/ecosystem")
        ranges = tuple(
            VersionRange(
                type=str(r["type"]),
                events=tuple(
                    RangeEvent(kind=kind, version=str(value))
                    for event in r.get("events", [])
                    for kind, value in event.items()
                ),
            )
            for r in entry.get("ranges", [])
        )
        affected.append(
            AffectedPackage(
                ecosystem=str(package["ecosystem"]),
                name=str(package["name"]),
                ranges=ranges,
                versions=tuple(str(v) for v in entry.get("versions", [])),
            )
        )
    return Advisory(
        id=advisory_id,
        modified=modified,
        summary=_first_line(str(record.get("summary") or record.get("details") or "")),
        aliases=tuple(str(a) for a in record.get("aliases", [])),
        withdrawn=str(record["withdrawn"]) if record.get("withdrawn") else None,
        affected=tuple(affected),
        severity=tuple(Severity(type=str(s["type"]), vector=str(s["score"])) for s in record.get("severity", [])),
    )


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else ""


def load_advisories(path: Path) -> list[Advisory]:
    """A JSON file, or every *.json in a folder (sorted, so imports are repeatable)."""
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise InvalidArgument(f"no OSV JSON files in {path}")
    advisories = []
    for file in files:
        try:
            record = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise InvalidArgument(f"{file}: not readable OSV JSON ({error})") from None
        advisories.append(parse_advisory(record))
    return advisories


def _in_range(version: Any, vrange: VersionRange, comparator: _Comparator) -> bool:
    """The OSV evaluation algorithm for one range; unorderable events are left out."""
    limits: list[Any] = []
    ordered: list[tuple[int, Any, str]] = []
    for event in vrange.events:
        if event.kind == "limit":
            if event.version == "*":
                continue
            bound = comparator.parse(event.version)
            if bound is not None:
                limits.append(bound)
            continue
        if event.kind == "introduced" and event.version == "0":
            ordered.append((0, None, event.kind))
            continue
        parsed = comparator.parse(event.version)
        if parsed is not None:
            ordered.append((1, parsed, event.kind))
    if limits and not any(version < bound for bound in limits):
        return False
    # Walked in version order, events at one version as a group ("0" first). A group's opening
    # and closing at the same version mean two things: with the range closed before it, a pair
    # `introduced x, fixed x` that affects nothing ([x, x) is empty); with it open, back-to-back
    # ranges, `[.., x)` closing where `[x, ..)` opens, so x itself is affected.
    groups: list[tuple[Any, list[str]]] = []
    for _, bound, kind in sorted(ordered, key=lambda e: (0,) if e[1] is None else (1, e[1])):
        if groups and groups[-1][0] == bound:
            groups[-1][1].append(kind)
        else:
            groups.append((bound, [kind]))
    affected = False
    for bound, kinds in groups:
        opens = "introduced" in kinds and (bound is None or version >= bound)
        closes = ("fixed" in kinds and version >= bound) or ("last_affected" in kinds and version > bound)
        # Open: only a closing without a reopening ends it. Closed: a pair at x leaves it closed.
        affected = (opens or not closes) if affected else (opens and not closes)
    return affected


def _listed(version_text: str, listed: Iterable[str]) -> bool:
    """PEP 440 equality (`3.01` == `3.1`, `3.1.0.rc1` == `3.1.0rc1`); exact text otherwise."""
    try:
        wanted = _pep440(version_text)
    except InvalidVersion:
        return version_text in listed
    for item in listed:
        try:
            if _pep440(item) == wanted:
                return True
        except InvalidVersion:
            continue
    return False


def package_affected(package: AffectedPackage, version_text: str) -> bool:
    if _listed(version_text, package.versions):
        return True
    for vrange in package.ranges:
        comparator = _COMPARATORS.get(vrange.type)
        if comparator is None:
            continue  # GIT: commit ids, not comparable to an installed version
        version = comparator.parse(version_text)
        if version is not None and _in_range(version, vrange, comparator):
            return True
    return False


def affects(advisory: Advisory, *, ecosystem: str, name: str, version: str) -> AffectedPackage | None:
    """The affected entry that makes `name==version` vulnerable, or None. Withdrawn never match."""
    if advisory.is_withdrawn:
        return None
    key = canonicalize_name(name) if ecosystem == PYPI else name
    for package in advisory.affected:
        if package.ecosystem == ecosystem and package.key == key and package_affected(package, version):
            return package
    return None


def fixed_versions(package: AffectedPackage) -> list[str]:
    """What to upgrade to, for the operator's table."""
    return [e.version for r in package.ranges if r.type != "GIT" for e in r.events if e.kind == "fixed"]
