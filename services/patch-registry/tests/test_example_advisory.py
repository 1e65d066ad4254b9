"""examples/osv-advisory.json, the file docs/patching.md and docs/console.md offer for a first
import: a valid OSV record that every running instance matches (each runs grpcio)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from parley_patch_registry.advisories import affects, load_advisories
from parley_patch_registry.findings import score

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "osv-advisory.json"


def test_the_example_advisory_imports_and_matches_the_grpcio_every_service_runs() -> None:
    [advisory] = load_advisories(EXAMPLE)
    assert advisory.id == "PARLEY-EXAMPLE-0001"
    assert not advisory.is_withdrawn
    assert "not a real vulnerability" in advisory.summary
    assert score(advisory).priority == "medium"  # due in 30 days: a finding to look at, not an alarm
    assert affects(advisory, ecosystem="PyPI", name="grpcio", version=metadata.version("grpcio")) is not None
