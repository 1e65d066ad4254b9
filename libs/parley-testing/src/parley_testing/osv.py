"""OSV advisory records for tests of the patch registry's findings."""

from __future__ import annotations

from typing import Any

__all__ = ["messaging_osv"]


def messaging_osv(advisory_id: str, fixed: str, *, vector: str = "") -> dict[str, Any]:
    """A flaw in parley-messaging (PyPI) from its first version until `fixed`; `vector`: its CVSS v3."""
    record: dict[str, Any] = {
        "id": advisory_id,
        "modified": "2026-11-01T00:00:00Z",
        "summary": f"messaging before {fixed}",
        "affected": [
            {
                "package": {"ecosystem": "PyPI", "name": "parley-messaging"},
                "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": fixed}]}],
            }
        ],
    }
    if vector:
        record["severity"] = [{"type": "CVSS_V3", "score": vector}]
    return record
