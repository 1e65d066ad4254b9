"""The audit chain's verification state on storage's /metrics: intact on a running stack, and
tampered once someone with database access deletes a record's row; the same verdict, with the
newest operator checkpoint, through the gateway's VerifyAudit for a security-auditor only."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from pathlib import Path

import grpc
import pytest
from parley.auth.v1.events_pb2 import SecurityEventRecorded
from parley.common.v1.envelope_pb2 import EventEnvelope
from parley.storage.v1 import storage_pb2
from prometheus_client import CollectorRegistry

from parley_core.audit import Checkpoint
from parley_core.envelope import open_payload
from parley_testing.stack import TIMEOUT_S, Stack, bearer
from parley_testing.waiting import eventually, until

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


async def newest_record(stack: Stack, auditor: tuple[tuple[str, str]]) -> SecurityEventRecorded:
    """The newest audit record the archive holds, read as the auditor."""
    page = await stack.gateway().QueryAudit(
        storage_pb2.QueryAuditRequest(limit=1000), metadata=auditor, timeout=TIMEOUT_S
    )
    records = [
        payload
        for event in page.events
        if event.envelope
        and isinstance(payload := open_payload(EventEnvelope.FromString(event.envelope)), SecurityEventRecorded)
    ]
    return max(records, key=lambda r: r.chain_index)


@pytest.fixture
def checkpoints(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    folder = tmp_path / "checkpoints"  # beside the stack's data folder, not in it
    folder.mkdir()
    monkeypatch.setenv("PARLEY_STORAGE_AUDIT_CHECKPOINT_DIR", str(folder))
    return folder


async def test_verify_audit_answers_from_the_monitor_with_the_newest_checkpoint_for_an_auditor_only(
    checkpoints: Path, stack: Stack
) -> None:
    gateway = stack.gateway()
    await stack.create_user("audrey", "security-auditor")
    auditor = bearer((await stack.login("audrey")).access_token)
    for role in ("member", "guest", "operator", "admin"):
        await stack.create_user(role, role)
        token = bearer((await stack.login(role)).access_token)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gateway.VerifyAudit(storage_pb2.GetAuditChainStateRequest(), metadata=token, timeout=TIMEOUT_S)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, role

    first = await gateway.VerifyAudit(storage_pb2.GetAuditChainStateRequest(), metadata=auditor, timeout=TIMEOUT_S)
    assert first.intact, list(first.findings)
    assert not first.HasField("last_checkpoint")
    assert [e for e in first.checkpoint_errors if "no checkpoint in" in e]
    # Asked again without verify_now: the stored verdict, not a new run over the archive.
    again = await gateway.VerifyAudit(storage_pb2.GetAuditChainStateRequest(), metadata=auditor, timeout=TIMEOUT_S)
    assert again.verified_at == first.verified_at

    # An operator's checkpoint of the head (as `parley audit checkpoint` writes it), then a fresh run.
    head = await newest_record(stack, auditor)
    (checkpoints / "2026-12-05.json").write_text(Checkpoint.of(head, taken_at="2026-12-05T01:00:00+00:00").to_json())
    (checkpoints / "torn.json").write_text("{")
    fresh = await gateway.VerifyAudit(
        storage_pb2.GetAuditChainStateRequest(verify_now=True), metadata=auditor, timeout=TIMEOUT_S
    )
    assert fresh.verified_at > first.verified_at
    assert fresh.intact, list(fresh.findings)
    assert fresh.last_checkpoint.chain_index == head.chain_index
    assert fresh.last_checkpoint.taken_at == "2026-12-05T01:00:00+00:00"
    assert fresh.last_checkpoint.source == "checkpoint 2026-12-05.json"
    assert fresh.last_checkpoint.matches
    assert [e for e in fresh.checkpoint_errors if e.startswith("checkpoint torn.json: not a readable")]

    # A checkpoint whose hash the archive does not hold (nor auth signed) is not matched.
    altered = Checkpoint.of(head, taken_at="2026-12-05T02:00:00+00:00")
    altered = dataclasses.replace(altered, record_hash=bytes(32))
    (checkpoints / "2026-12-05-later.json").write_text(altered.to_json())
    checked = await gateway.VerifyAudit(
        storage_pb2.GetAuditChainStateRequest(verify_now=True), metadata=auditor, timeout=TIMEOUT_S
    )
    assert checked.last_checkpoint.source == "checkpoint 2026-12-05-later.json"
    assert not checked.last_checkpoint.matches
    assert not checked.intact


async def test_without_a_setting_the_checkpoints_are_the_data_folders_and_a_plain_read_is_up_to_date(
    stack: Stack,
) -> None:
    """No PARLEY_STORAGE_AUDIT_CHECKPOINT_DIR (as `make run` starts it): storage reads
    <data>/audit-checkpoints, where `parley audit checkpoint` writes without --out. The page's
    first read (no verify_now) tells what is there now, not the periodic run's older verdict."""
    gateway = stack.gateway()
    await stack.create_user("audrey", "security-auditor")
    auditor = bearer((await stack.login("audrey")).access_token)
    first = await gateway.VerifyAudit(storage_pb2.GetAuditChainStateRequest(), metadata=auditor, timeout=TIMEOUT_S)
    assert not first.HasField("last_checkpoint")
    folder = stack.data_dir / "audit-checkpoints"
    assert [e for e in first.checkpoint_errors if f"no checkpoint in {folder} yet" in e], list(first.checkpoint_errors)

    head = await newest_record(stack, auditor)
    folder.mkdir()
    (folder / "checkpoint-now.json").write_text(Checkpoint.of(head, taken_at="2026-12-05T03:00:00+00:00").to_json())
    read = await gateway.VerifyAudit(storage_pb2.GetAuditChainStateRequest(), metadata=auditor, timeout=TIMEOUT_S)
    assert read.last_checkpoint.source == "checkpoint checkpoint-now.json"
    assert read.last_checkpoint.matches
    assert read.intact, list(read.findings)

    # A record appended since (a login): the next plain read covers it.
    await stack.create_user("bob", "member")
    await stack.login("bob")

    async def archived_since() -> SecurityEventRecorded | None:
        # The login's record reaches the archive a moment after the login answered.
        newest = await newest_record(stack, auditor)
        return newest if newest.chain_index > read.last_index else None

    newest = await eventually(archived_since, "the login's audit record in the archive", TIMEOUT_S)

    settled = await gateway.VerifyAudit(storage_pb2.GetAuditChainStateRequest(), metadata=auditor, timeout=TIMEOUT_S)
    assert settled.last_index >= newest.chain_index  # the archive holds it (read above): the run covers it
    assert settled.verified_at > read.verified_at
    # Nothing changed since: the stored verdict, not another run.
    again = await gateway.VerifyAudit(storage_pb2.GetAuditChainStateRequest(), metadata=auditor, timeout=TIMEOUT_S)
    assert again.verified_at == settled.verified_at
