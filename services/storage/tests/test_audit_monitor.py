"""The audit chain's verification state on storage's /metrics: intact on a running stack, and
tampered once someone with database access deletes a record's row."""

from __future__ import annotations

import contextlib
import sqlite3

import grpc
import pytest
from prometheus_client import CollectorRegistry

from parley_core.testing.stack import TIMEOUT_S, Stack
from parley_core.testing.waiting import until

RECORDS = 6


@pytest.fixture
def frequent_verification(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_STORAGE_AUDIT_VERIFY_INTERVAL_SECONDS", "0.2")


def registry(stack: Stack) -> CollectorRegistry:
    ctx = stack.apps["storage"].ctx
    assert ctx is not None
    return ctx.metrics.registry


def sample(stack: Stack, name: str, labels: dict[str, str] | None = None) -> float | None:
    return registry(stack).get_sample_value(name, labels or {})


async def test_the_audit_chain_verification_is_exported_and_catches_a_deleted_row(
    frequent_verification: None, stack: Stack
) -> None:
    await stack.create_user("alice", "member")
    for attempt in range(RECORDS):
        password = "wrong-password-here" if attempt % 2 else "a-long-enough-passphrase"
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stack.login("alice", password)

    def verified_to_the_head() -> bool:
        head = sample(stack, "parley_audit_chain_head_index") or 0
        return head >= RECORDS and sample(stack, "parley_audit_chain_verified_index") == head

    await until(verified_to_the_head, "storage to verify the archived chain up to the live head", TIMEOUT_S)
    assert sample(stack, "parley_audit_chain_intact") == 1
    assert sample(stack, "parley_audit_chain_findings", {"kind": "deleted"}) == 0
    assert (sample(stack, "parley_audit_verify_last_run_timestamp_seconds") or 0) > 0

    # Someone with database access deletes record #4's row.
    with sqlite3.connect(stack.data_dir / "storage" / "archive.db") as db:
        deleted = db.execute(
            "DELETE FROM events WHERE stream = 'SEC' AND aggregate_type = 'security' AND aggregate_version = 4"
        )
        assert deleted.rowcount == 1

    await until(
        lambda: sample(stack, "parley_audit_chain_intact") == 0, "the next verification to find the gap", TIMEOUT_S
    )
    assert sample(stack, "parley_audit_chain_findings", {"kind": "deleted"}) == 1
