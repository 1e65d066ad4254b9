"""What an instance actually runs, as its heartbeats report it for vulnerability findings.

Two things make a plain `importlib.metadata.distributions()` listing wrong:
- an agent-installed release's environment also sees the base environment (through a .pth
  file), so a package can be listed twice; only the first on sys.path is the one imported;
- the shared environment holds every Parley service, so an auth instance would be flagged for
  a messaging advisory. Only the service's own distribution and what it requires count.
"""

from __future__ import annotations

import importlib.metadata
import re

from parley.fleet.v1.fleet_pb2 import Distribution

# What every service runs on; the root when the service has no distribution of its own (tests).
RUNNER_DISTRIBUTION = "parley-core"
_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRA_MARKER = re.compile(r";.*\bextra\s*==")


def canonical(name: str) -> str:
    """PEP 503 normal form: `PyJWT`, `pyjwt` and `py_jwt` name one project."""
    return re.sub(r"[-_.]+", "-", name).lower()


def importable_distributions() -> dict[str, importlib.metadata.Distribution]:
    """Per project, the distribution import finds: the first on sys.path (as importlib searches)."""
    first: dict[str, importlib.metadata.Distribution] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            first.setdefault(canonical(name), dist)
    return first


def _required_names(dist: importlib.metadata.Distribution) -> list[str]:
    """Projects it requires, leaving out those only an optional extra asks for."""
    names = []
    for requirement in dist.requires or []:
        match = _REQUIREMENT_NAME.match(requirement)
        if match and not _EXTRA_MARKER.search(requirement):
            names.append(canonical(match.group(1)))
    return names


def running_distributions(root: str) -> list[Distribution]:
    """``root`` (e.g. ``parley-messaging``) and its requirements, recursively, as installed."""
    available = importable_distributions()
    start = canonical(root) if canonical(root) in available else RUNNER_DISTRIBUTION
    reported: dict[str, str] = {}
    visited: set[str] = set()
    pending = [start]
    while pending:
        name = pending.pop()
        if name in visited or name not in available:
            continue
        visited.add(name)
        dist = available[name]
        reported[str(dist.metadata["Name"]).lower()] = dist.version
        pending.extend(_required_names(dist))
    return [Distribution(name=n, version=v) for n, v in sorted(reported.items())]
