"""The compliance report's signature and its roll-out section, without a platform (the e2e test in
tests/e2e/test_compliance_report.py generates one from a running platform)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from parley.patch.v1 import patch_pb2

from parley_cli.audit import AuditVerdict
from parley_cli.compliance import ComplianceFacts, render
from parley_cli.report_signing import ReportNotVerified, load_or_create_signing_key, signed, verify
from parley_core.audit_log import ChainHead

BODY = b"# Parley compliance report\n\n| a | b |\n"


def test_a_signed_report_verifies_and_any_changed_byte_does_not() -> None:
    key = Ed25519PrivateKey.generate()
    report = signed(BODY, key)
    assert verify(report, key.public_key()).body == BODY
    for at in range(len(BODY)):
        changed = bytearray(report)
        changed[at] ^= 0x20
        with pytest.raises(ReportNotVerified, match="TAMPERED"):
            verify(bytes(changed), key.public_key())


def test_a_report_without_its_signature_or_checked_with_another_key_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    report = signed(BODY, key)
    with pytest.raises(ReportNotVerified, match="no signature line"):
        verify(BODY, key.public_key())
    with pytest.raises(ReportNotVerified, match="not by the public key given"):
        verify(report, Ed25519PrivateKey.generate().public_key())
    with pytest.raises(ReportNotVerified, match="damaged"):
        verify(report.replace(b"signature=", b"signature=!"), key.public_key())


def test_the_signing_key_is_made_once_owner_only(tmp_path: Path) -> None:
    first = load_or_create_signing_key(tmp_path)
    key_file = tmp_path / "secrets" / "report-signing-key.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "secrets").stat().st_mode & 0o777 == 0o700
    second = load_or_create_signing_key(tmp_path)
    assert first.private_bytes_raw() == second.private_bytes_raw()


def _rollout(planned_by: str, approved_by: str) -> patch_pb2.Rollout:
    gate = patch_pb2.GateFigures(step=0, weight=10, passed=False)
    return patch_pb2.Rollout(
        rollout_id="r-1",
        service="messaging",
        from_version="0.1.0",
        to_version="0.2.0",
        state="rolled_back",
        planned_by=planned_by,
        approved_by=approved_by,
        rollback_reason="gate failed",
        audit=[
            patch_pb2.AuditEntry(at=2000.0, actor=planned_by, event="RolloutPlanned"),
            patch_pb2.AuditEntry(at=2001.0, actor="registry", event="GateEvaluated", detail="errors 5%", gate=gate),
        ],
    )


def _facts(rollouts: list[patch_pb2.Rollout]) -> ComplianceFacts:
    audit = AuditVerdict(records=[], findings=[], head=ChainHead(stream_last_seq=0, record=None))
    return ComplianceFacts(
        generated_at=3000.0,
        since=1000.0,
        instances=[],
        findings=[],
        rollouts=rollouts,
        names={"id-olga": "olga", "id-oscar": "oscar"},
        audit=audit,
    )


def test_roll_outs_name_planner_and_approver_and_each_gate_verdict() -> None:
    text = render(_facts([_rollout("id-olga", "id-oscar")]))
    assert "| r-1 | messaging | 0.1.0 -> 0.2.0 | rolled_back (gate failed) | olga | oscar | yes | - |" in text
    assert "### Gate verdicts of r-1" in text
    assert "| 0 | 10% | FAILED | errors 5% |" in text
    own = render(_facts([_rollout("id-olga", "id-olga")]))
    assert "| NO: planner approved |" in own
