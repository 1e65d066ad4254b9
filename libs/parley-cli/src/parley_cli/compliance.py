"""The compliance report's content: what the fleet runs, open findings, roll-outs with their
approvals and gate verdicts, and the audit chain's state, read from the running platform through
the APIs behind `parley fleet`, `parley advisories list`, `parley patch status` and `parley audit
verify`, then written as Markdown (render) with no I/O of its own; the security sections
(encryption and keys, MFA, retention, backups, erasures) come from compliance_security.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from parley.fleet.v1 import fleet_pb2
from parley.patch.v1 import patch_pb2
from parley.storage.v1 import storage_pb2, storage_pb2_grpc

from parley_cli.audit import AuditVerdict, storage_channel, verify_audit
from parley_cli.compliance_security import SecurityFacts, gather_security
from parley_cli.layout import due, utc_minute, when
from parley_cli.registry_connection import RegistryConnection
from parley_cli.report_charts import FindingPoint, findings_by_severity, patch_sla_over_time
from parley_cli.report_html import SEVERITY_COLOURS, markdown_to_html
from parley_cli.security_sections import render_sections
from parley_cli.usernames import named
from parley_patch_registry.priorities import PRIORITIES as SEVERITY_ORDER


@dataclass(frozen=True)
class ComplianceFacts:
    generated_at: float
    since: float
    instances: Sequence[fleet_pb2.InstanceStatus]
    findings: Sequence[patch_pb2.Finding]
    rollouts: Sequence[patch_pb2.Rollout]  # those with activity in the period
    names: dict[str, str]
    audit: AuditVerdict
    security: SecurityFacts = field(default_factory=SecurityFacts)
    # Storage's audit monitor's last run, for the newest operator checkpoint; None when unread.
    chain_state: storage_pb2.AuditChainState | None = None
    # Findings fixed in the period, each with its detected_at and fixed_at.
    fixed: Sequence[patch_pb2.Finding] = ()


def active_since(rollout: patch_pb2.Rollout, since: float) -> bool:
    return any(entry.at >= since for entry in rollout.audit)


async def gather(data_dir: Path, *, since: float, now: float) -> ComplianceFacts:
    # As the platform identity (no --as user): every call here is a read the operator's CLI makes too.
    connection = RegistryConnection(argparse.Namespace(data_dir=data_dir, user=None))
    try:
        instances = (await connection.call(connection.fleet.ListInstances, fleet_pb2.ListInstancesRequest())).instances
        listed = await connection.call(
            connection.patch.ListFindings, patch_pb2.ListFindingsRequest(include_fixed=True, fixed_since=since)
        )
        findings, fixed = listed.findings, listed.fixed
        every = (await connection.call(connection.patch.ListRollouts, patch_pb2.ListRolloutsRequest())).rollouts
        rollouts = [r for r in every if active_since(r, since)]
        names = await connection.names(rollouts)
    finally:
        await connection.close()
    audit = await verify_audit(data_dir)
    channel = storage_channel(data_dir)
    try:
        archive = storage_pb2_grpc.StorageArchiveServiceStub(channel)
        security = await gather_security(archive, data_dir)
        # A fresh run, so a checkpoint written since the monitor's last one is compared too.
        fresh = storage_pb2.GetAuditChainStateRequest(verify_now=True)
        chain_state = await archive.GetAuditChainState(fresh, timeout=120.0)
    finally:
        await channel.close()
    return ComplianceFacts(
        generated_at=now,
        since=since,
        instances=list(instances),
        findings=list(findings),
        rollouts=rollouts,
        names=names,
        audit=audit,
        security=security,
        chain_state=chain_state,
        fixed=list(fixed),
    )


def _cell(value: object) -> str:
    """A Markdown table cell: the registry's strings (summaries, names) cannot break the table."""
    text = " ".join(str(value).split())
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;") or "-"


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines.extend("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows)
    return [*lines, ""]


def _severity_rank(finding: patch_pb2.Finding) -> tuple[bool, int, float]:
    rank = SEVERITY_ORDER.index(finding.priority) if finding.priority in SEVERITY_ORDER else len(SEVERITY_ORDER)
    return (not finding.overdue, rank, finding.deadline)


def _fleet(facts: ComplianceFacts) -> list[str]:
    lines = ["## Fleet", ""]
    if not facts.instances:
        return [*lines, "No instance has reported.", ""]
    versions = sorted({(i.last_heartbeat.service, i.last_heartbeat.version) for i in facts.instances})
    lines.append(f"{len(facts.instances)} instances; versions running: " + ", ".join(f"{s} {v}" for s, v in versions))
    lines.append("")
    rows = [
        (
            i.last_heartbeat.service,
            i.last_heartbeat.version,
            i.last_heartbeat.instance_id,
            i.last_heartbeat.host,
            "STALE (no heartbeat)" if i.stale else i.last_heartbeat.health,
            sum(1 for f in facts.findings if f.instance_id == i.last_heartbeat.instance_id),
        )
        for i in sorted(facts.instances, key=lambda i: (i.last_heartbeat.service, i.last_heartbeat.instance_id))
    ]
    return lines + _table(("service", "version", "instance", "host", "health", "open findings"), rows)


def _findings(facts: ComplianceFacts) -> list[str]:
    lines = ["## Open findings", ""]
    if not facts.findings:
        return [*lines, "No running instance is affected by an imported advisory.", ""]
    overdue = [f for f in facts.findings if f.overdue]
    counts = {p: sum(1 for f in facts.findings if f.priority == p) for p in SEVERITY_ORDER}
    summary = ", ".join(f"{p} {n}" for p, n in counts.items() if n)
    # Bold (red on the page) only what needs someone's attention.
    late = f"**{len(overdue)} overdue**" if overdue else "none overdue"
    lines.append(f"{len(facts.findings)} open findings ({summary}); {late}.")
    lines.append("")
    rows = [
        (
            f.advisory_id,
            f.priority,
            f"{f.cvss_score:.1f}" if f.cvss_score else "-",
            f.service,
            f.instance_id,
            f"{f.package} {f.installed_version}",
            ", ".join(f.fixed_in) or "-",
            utc_minute(f.detected_at) if f.detected_at else "-",
            utc_minute(f.deadline),
            due(f.deadline, facts.generated_at).replace("OVERDUE", "**OVERDUE**"),
        )
        for f in sorted(facts.findings, key=_severity_rank)
    ]
    headers = ("advisory", "severity", "CVSS", "service", "instance", "package", "fixed in", "detected", "deadline")
    lines += _table((*headers, "due"), rows)
    advisories = {f.advisory_id: f for f in facts.findings}  # one line per advisory, not per instance
    for advisory_id, finding in sorted(advisories.items()):
        aliases = f" ({_cell(', '.join(finding.aliases))})" if finding.aliases else ""
        lines.append(f"- {_cell(advisory_id)}{aliases}: {_cell(finding.summary)}")
    return [*lines, ""]


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


def _time_to_patch(facts: ComplianceFacts) -> list[str]:
    """Per severity: findings fixed in the period with their mean and longest time to patch (from
    first detection on the service to no live instance affected), and how old the open ones are."""
    lines = ["## Time to patch", ""]
    if not facts.fixed and not facts.findings:
        return [*lines, "No finding was open or fixed in the period.", ""]
    lines += [
        "A finding is fixed when the service has live instances again and none of them is affected "
        "(a roll-out replaced them); its time to patch runs from when the service was first seen affected. "
        "Detections and fixes are the registry's own events, so a restart loses none.",
        "",
    ]
    rows = []
    for priority in SEVERITY_ORDER:
        fixed = [f.fixed_at - f.detected_at for f in facts.fixed if f.priority == priority]
        late = sum(1 for f in facts.fixed if f.priority == priority and f.overdue)
        ages = [facts.generated_at - f.detected_at for f in facts.findings if f.priority == priority and f.detected_at]
        if not fixed and not ages:
            continue
        rows.append(
            (
                priority,
                len(fixed),
                _hours(sum(fixed) / len(fixed)) if fixed else "-",
                _hours(max(fixed)) if fixed else "-",
                late,
                len(ages),
                _hours(sum(ages) / len(ages)) if ages else "-",
                _hours(max(ages)) if ages else "-",
            )
        )
    headers = ("severity", "fixed", "mean time to patch", "max time to patch", "fixed late")
    return lines + _table((*headers, "open", "mean open age", "oldest open"), rows)


def _second_person(rollout: patch_pb2.Rollout) -> str:
    if not rollout.approved_by:
        return "not approved"
    return "yes" if rollout.approved_by != rollout.planned_by else "NO: planner approved"


def _rollouts(facts: ComplianceFacts) -> list[str]:
    lines = ["## Roll-outs in the period", ""]
    if not facts.rollouts:
        return [*lines, "No roll-out was planned or moved in the period.", ""]
    rows = [
        (
            r.rollout_id,
            r.service,
            f"{r.from_version or '?'} -> {r.to_version}",
            r.state + (f" ({r.rollback_reason})" if r.rollback_reason else ""),
            named(r.planned_by, facts.names),
            named(r.approved_by, facts.names) if r.approved_by else "-",
            _second_person(r),
            "forced: " + r.reason if r.forced else (r.reason or "-"),
        )
        for r in facts.rollouts
    ]
    lines += _table(
        ("roll-out", "service", "versions", "state", "planned by", "approved by", "second person", "reason"), rows
    )
    for rollout in facts.rollouts:
        verdicts = [a for a in rollout.audit if a.event == "GateEvaluated"]
        lines += [f"### Gate verdicts of {rollout.rollout_id}", ""]
        if not verdicts:
            lines += ["No health gate was evaluated.", ""]
            continue
        lines += _table(
            ("when", "step", "share", "verdict", "detail"),
            [
                (
                    when(a.at),
                    a.gate.step,
                    f"{a.gate.weight}%" if a.gate.weight else "-",
                    "passed" if a.gate.passed else "FAILED",
                    a.detail,
                )
                for a in verdicts
            ],
        )
    return lines


def _audit(facts: ComplianceFacts) -> list[str]:
    audit = facts.audit
    lines = ["## Audit chain", ""]
    last = max((r.chain_index for r in audit.records), default=0)
    if audit.findings:
        lines.append(f"Verify: **TAMPERED**, {len(audit.findings)} finding(s) over {len(audit.records)} records:")
        lines.append("")
        lines.extend(f"- {_cell(f)}" for f in sorted(audit.findings, key=lambda f: (f.chain_index, f.kind)))
    else:
        lines.append(f"Verify: intact, {len(audit.records)} records (#1..#{last}), every signature valid.")
    lines.append("")
    head = audit.head.record
    if head is None:
        lines.append("Head: the SEC stream holds no audit record yet.")
    else:
        at = when(head.occurred_at_unix_ns / 1e9) if head.occurred_at_unix_ns else "-"
        lines.append(
            f"Head (live SEC stream): record #{head.chain_index}, hash `{bytes(head.record_hash).hex()}`, "
            f"key `{head.key_id}`, at {at}."
        )
    return [*lines, "", *_checkpoint(facts.chain_state)]


def _checkpoint(state: storage_pb2.AuditChainState | None) -> list[str]:
    """The newest operator checkpoint (`parley audit checkpoint`) storage compared the archive with."""
    if state is None:
        return []
    if not state.HasField("last_checkpoint"):
        lines = ["Last operator checkpoint: none read (`parley audit checkpoint` writes one where storage reads it)."]
    else:
        cp = state.last_checkpoint
        held = "the archive still holds it" if cp.matches else "**the archive's record DIFFERS from it**"
        lines = [
            f"Last operator checkpoint: record #{cp.chain_index}, taken {_cell(_taken(cp.taken_at))} "
            f"({_cell(cp.source)}), compared {when(state.verified_at)}: {held}."
        ]
    lines += [f"- checkpoint not read: {_cell(error)}" for error in state.checkpoint_errors]
    return [*lines, ""]


def _taken(iso: str) -> str:
    """A checkpoint's ISO 8601 time as the report's other times; what is no such time, as written."""
    try:
        at = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def render(facts: ComplianceFacts) -> str:
    header = [
        "# Parley compliance report",
        "",
        f"- Generated: {when(facts.generated_at)}",
        f"- Period: {utc_minute(facts.since)} to {utc_minute(facts.generated_at)}",
        "- Signed: Ed25519, the last line of this file; check with `parley report verify FILE`",
        "",
    ]
    security = render_sections(facts.security, since=facts.since, now=facts.generated_at, table=_table)
    patching = _findings(facts) + _time_to_patch(facts)
    return "\n".join(header + _fleet(facts) + patching + _rollouts(facts) + _audit(facts) + security)


def render_html(facts: ComplianceFacts) -> str:
    """The same report as one self-contained HTML page, with its charts under "Open findings"."""
    points = [
        FindingPoint(f.priority, f.detected_at or facts.generated_at, f.deadline, f.overdue) for f in facts.findings
    ]
    fixed = [FindingPoint(f.priority, f.detected_at, f.deadline, f.overdue, f.fixed_at) for f in facts.fixed]
    charts = [
        findings_by_severity(points, SEVERITY_ORDER, SEVERITY_COLOURS),
        patch_sla_over_time(points + fixed, since=facts.since, now=facts.generated_at),
    ]
    return markdown_to_html(render(facts), charts={"Open findings": charts})
