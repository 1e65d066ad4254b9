"""The compliance report's signature and its roll-out section, without a platform (the e2e test in
tests/e2e/test_compliance_report.py generates one from a running platform)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from parley.patch.v1 import events_pb2, patch_pb2

from parley_cli.audit import AuditVerdict
from parley_cli.compliance import ComplianceFacts, render, render_html
from parley_cli.report_charts import PAST, FindingPoint, patch_sla_over_time
from parley_cli.report_signing import ReportNotVerified, load_or_create_signing_key, signed, verify
from parley_core.audit_log import ChainHead
from parley_testing.rollouts import reported_rollout

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
    gate = events_pb2.GateEvaluated(step=0, weight=10, passed=False)
    return reported_rollout(
        state="rolled_back",
        planned_by=planned_by,
        approved_by=approved_by,
        rollback_reason="gate failed",
        audit=[
            patch_pb2.AuditEntry(at=2000.0, actor=planned_by, event="RolloutPlanned"),
            patch_pb2.AuditEntry(at=2001.0, actor="registry", event="GateEvaluated", detail="errors 5%", gate=gate),
        ],
    )


def _facts(
    rollouts: list[patch_pb2.Rollout], findings: Sequence[patch_pb2.Finding] = (), generated_at: float = 3000.0
) -> ComplianceFacts:
    audit = AuditVerdict(records=[], findings=[], head=ChainHead(stream_last_seq=0, record=None))
    return ComplianceFacts(
        generated_at=generated_at,
        since=1000.0,
        instances=[],
        findings=list(findings),
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


def _finding(priority: str, *, detected_at: float, deadline: float, overdue: bool) -> patch_pb2.Finding:
    return patch_pb2.Finding(
        advisory_id=f"ADV-{priority}",
        summary="<script>alert(1)</script> | piped",
        service="gateway",
        instance_id="gateway-1",
        package="grpcio",
        installed_version="1.0",
        priority=priority,
        detected_at=detected_at,
        deadline=deadline,
        overdue=overdue,
    )


def test_the_html_page_renders_the_same_report_escaped_with_its_charts_and_signs_like_markdown() -> None:
    day = 86_400.0
    findings = [
        _finding("critical", detected_at=1000.0 + 2 * day, deadline=1000.0 + 3 * day, overdue=True),
        _finding("medium", detected_at=1000.0 + 5 * day, deadline=1000.0 + 30 * day, overdue=False),
    ]
    facts = _facts([_rollout("id-olga", "id-oscar")], findings, generated_at=1000.0 + 10 * day)
    page = render_html(facts)
    assert "<script" not in page  # the registry's strings are text, never markup
    assert "&lt;script&gt;alert(1)&lt;/script&gt; | piped" in page
    assert "<td>rolled_back (gate failed)</td><td>olga</td><td>oscar</td><td>yes</td>" in page
    assert "<h2>Open findings</h2>" in page
    assert "<strong>1 overdue</strong>" in page
    # Every heading of the Markdown report is a heading of the page.
    for line in render(facts).splitlines():
        if line.startswith("## "):
            assert f"<h2>{line[3:]}</h2>" in page
    assert 'aria-label="Open findings by severity: critical 1, high 0, medium 1, low 0, unscored 0"' in page
    assert 'aria-label="Patch SLA over the period: now 1 within their deadline, 1 overdue"' in page
    assert page.count('<rect x="') >= 10 + 2  # a bar a day, and the severities
    key = Ed25519PrivateKey.generate()
    filed = signed(page.encode(), key)
    assert verify(filed, key.public_key()).body == page.encode()
    changed = filed.replace(b"olga", b"olgb", 1)
    with pytest.raises(ReportNotVerified, match="TAMPERED"):
        verify(changed, key.public_key())


def test_time_to_patch_per_severity_from_the_fixed_findings_and_the_open_ones_ages() -> None:
    hour = 3600.0
    now = 1000.0 + 100 * hour

    def fixed(priority: str, detected: float, took: float, *, late: bool = False) -> patch_pb2.Finding:
        shown = _finding(priority, detected_at=detected, deadline=detected + hour, overdue=late)
        shown.fixed_at = detected + took
        return shown

    open_findings = [
        _finding("high", detected_at=now - 10 * hour, deadline=now + hour, overdue=False),
        _finding("high", detected_at=now - 30 * hour, deadline=now - hour, overdue=True),
    ]
    fixed_findings = [
        fixed("critical", 1000.0, 2 * hour, late=True),
        fixed("critical", 2000.0, 4 * hour, late=True),
        fixed("medium", 3000.0, 0.5 * hour),
    ]
    facts = replace(_facts([], open_findings, generated_at=now), fixed=fixed_findings)
    text = render(facts)
    assert "## Time to patch" in text
    # critical: (2 h + 4 h) / 2 = 3 h, the longest 4 h, both past their one-hour deadline
    assert "| critical | 2 | 3.0 h | 4.0 h | 2 | 0 | - | - |" in text
    # high: nothing fixed; open for 10 h and 30 h
    assert "| high | 0 | - | - | 0 | 2 | 20.0 h | 30.0 h |" in text
    assert "| medium | 1 | 0.5 h | 0.5 h | 0 | 0 | - | - |" in text
    assert "| low |" not in text  # a severity with nothing fixed nor open has no row
    page = render_html(facts)
    assert "<h2>Time to patch</h2>" in page
    assert "<td>critical</td><td>2</td><td>3.0 h</td><td>4.0 h</td>" in page


def test_the_patch_sla_chart_counts_a_fixed_finding_on_the_days_it_was_open_only() -> None:
    day = 86_400.0
    # detected on day 1, overdue from day 2, fixed on day 3.5; the report is on day 5
    late = FindingPoint("high", 1000.0 + day, 1000.0 + 2 * day, True, fixed_at=1000.0 + 3.5 * day)
    chart = patch_sla_over_time([late], since=1000.0, now=1000.0 + 5 * day)
    assert 'aria-label="Patch SLA over the period: now 0 within their deadline, 0 overdue"' in chart
    assert f'fill="{PAST}"' in chart, "it was overdue on the days before its fix"
    still_open = patch_sla_over_time([replace(late, fixed_at=0.0)], since=1000.0, now=1000.0 + 5 * day)
    assert 'now 0 within their deadline, 1 overdue"' in still_open


def test_times_and_record_positions_stay_on_one_line_in_the_page_and_its_pdf() -> None:
    """A4 print squeezed "2026-12-05 05:01 UTC" into four lines beside a wide sentence."""
    from parley_cli.report_html import markdown_to_html
    from parley_core.compliance_reports import REPORT_STYLE

    table = "| when | kind | concerns | detail | reference |\n|---|---|---|---|---|\n"
    row = "| 2026-12-05 05:01 UTC | anomaly:rushed_rollout | bob | a long sentence | STORE #12 |\n"
    page = markdown_to_html("# R\n\n" + table + row)
    assert '<th class="nowrap">when</th><th>kind</th>' in page
    assert '<td class="nowrap">2026-12-05 05:01 UTC</td><td>anomaly:rushed_rollout</td>' in page
    assert '<td class="nowrap">STORE #12</td>' in page
    assert ".nowrap{white-space:nowrap" in REPORT_STYLE
