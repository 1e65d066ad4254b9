"""The operator's roll-out views name people, not user ids: names come from storage's archive,
which the CLI reaches as the platform identity (parley_cli.usernames)."""

from __future__ import annotations

import pytest
from parley.patch.v1 import patch_pb2
from parley.storage.v1 import storage_pb2_grpc

from parley_cli.rollout_view import audit_table, print_rollout
from parley_cli.usernames import ArchiveUsernames, usernames
from parley_core.topology import PLATFORM_USER
from parley_testing.rollouts import reported_rollout
from parley_testing.stack import Stack
from parley_testing.waiting import eventually


async def test_user_ids_resolve_to_names_through_the_archive(stack: Stack) -> None:
    olga = await stack.create_user("olga", "operator")
    storage = storage_pb2_grpc.StorageArchiveServiceStub(stack.internal("storage", identity=PLATFORM_USER))

    async def olga_named() -> dict[str, str] | None:
        names = await usernames(storage, [olga.user_id, "registry", "no-such-user", ""])
        return names if olga.user_id in names else None

    # Archiving follows the AUTH stream by moments; until then the id is shown as it is.
    names = await eventually(olga_named, "olga's registration archived")
    assert names == {olga.user_id: "olga"}
    # `parley up`'s node agent asks the same way, on a channel of its own, for its roll-out lines.
    agents_lookup = ArchiveUsernames(stack.pki, f"127.0.0.1:{stack.ports['storage']}")
    try:
        assert await agents_lookup([olga.user_id, "registry"]) == {olga.user_id: "olga"}
    finally:
        await agents_lookup.close()


def test_rollout_view_and_audit_show_names(capsys: pytest.CaptureFixture[str]) -> None:
    rollout = reported_rollout(
        state="approved",
        planned_by="5f6c0000",
        approved_by="d21e0000",
        audit=[
            patch_pb2.AuditEntry(at=1.0, actor="5f6c0000", event="RolloutPlanned"),
            patch_pb2.AuditEntry(at=2.0, actor="registry", event="StepStarted"),
        ],
    )
    print_rollout(rollout, {"5f6c0000": "olga", "d21e0000": "oscar"})
    out = capsys.readouterr().out
    assert "planned by olga, approved by oscar" in out
    assert "5f6c0000" not in out
    print_rollout(rollout, {})  # nobody resolved: the ids, as before
    assert "planned by 5f6c0000, approved by d21e0000" in capsys.readouterr().out
    audit = audit_table(rollout, {"5f6c0000": "olga"})
    assert "olga" in audit.splitlines()[2]
    assert "registry" in audit.splitlines()[3]
    assert "5f6c0000" not in audit
