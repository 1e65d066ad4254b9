"""Heartbeat inventories name what runs, so findings follow roll-outs and stay with their service.

The real environment of this checkout holds every Parley service; a release the agent installs
is a folder earlier on sys.path that also sees this environment (as the agent's .pth file does).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from parley_core.inventory import running_distributions
from parley_patch_registry.advisories import Advisory, parse_advisory
from parley_patch_registry.findings import DeadlinePolicy, FindingBook, InstalledPackage
from parley_testing.osv import messaging_osv

FIXED_IN = "0.2.0"


def messaging_advisory() -> Advisory:
    return parse_advisory(messaging_osv("TEST-MSG-1", FIXED_IN))


def install_release(folder: Path, name: str, version: str, requires: list[str]) -> None:
    info = folder / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {name}",
        f"Version: {version}",
        *(f"Requires-Dist: {r}" for r in requires),
    ]
    (info / "METADATA").write_text("\n".join(lines) + "\n")


def inventory(service: str) -> dict[str, list[str]]:
    versions: dict[str, list[str]] = {}
    for dist in running_distributions(f"parley-{service}"):
        versions.setdefault(dist.name, []).append(dist.version)
    return versions


def findings(service: str) -> set[str]:
    installed = [
        InstalledPackage(service, f"{service}-1", "h", name, version)
        for name, versions in inventory(service).items()
        for version in versions
    ]
    book = FindingBook(DeadlinePolicy.default())
    return {f.advisory_id for f in book.reconcile([messaging_advisory()], installed, datetime.now(UTC))}


def test_base_environment_reports_the_service_and_its_requirements_only() -> None:
    auth = inventory("auth")
    assert "parley-auth" in auth
    assert "parley-core" in auth  # requirements, recursively
    assert "grpcio" in auth
    assert "protobuf" in auth  # a requirement of a requirement (grpcio-health-checking, parley-protos)
    assert "parley-messaging" not in auth, "another service of the shared environment is not auth's"
    assert "pytest" not in auth
    assert inventory("messaging")["parley-messaging"] == ["0.1.0"]


def test_rolled_out_release_reports_only_the_version_import_finds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert findings("messaging") == {"TEST-MSG-1"}
    assert findings("auth") == set(), "auth does not run parley-messaging"

    install_release(tmp_path, "parley-messaging", FIXED_IN, ["parley-core", "parley-protos"])
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])  # the release first, the base behind it

    assert inventory("messaging")["parley-messaging"] == [FIXED_IN]
    assert "parley-core" in inventory("messaging")
    assert findings("messaging") == set(), "the roll-out fixed the advisory"
