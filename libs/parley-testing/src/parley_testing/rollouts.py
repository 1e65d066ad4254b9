"""A roll-out as the patch registry reports it (patch.v1.Rollout), for tests of what the CLI, the
node agent and the compliance report show of one."""

from __future__ import annotations

from parley.patch.v1 import patch_pb2

__all__ = ["reported_rollout"]


def reported_rollout(**fields: object) -> patch_pb2.Rollout:
    """Roll-out r-1 of messaging 0.1.0 -> 0.2.0; `fields` set the rest (who planned and approved
    it, its state, steps and audit) or override these."""
    defaults: dict[str, object] = {
        "rollout_id": "r-1",
        "service": "messaging",
        "from_version": "0.1.0",
        "to_version": "0.2.0",
    }
    return patch_pb2.Rollout(**{**defaults, **fields})  # type: ignore[arg-type]
