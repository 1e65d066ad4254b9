"""The compliance report's security sections, rendered from SecurityFacts (no I/O): encryption
and key ages, MFA coverage by role, retention policies in force, backups, erasures with their
audit references, and the period's security events."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

from parley_cli.compliance_security import SecurityFacts, user_in
from parley_cli.layout import utc_minute
from parley_core.backup_journal import BackupEntry
from parley_core.synthetic import PROBER_NAME_PREFIX

# compliance.py's Markdown table: headers and rows in, lines out (cells escaped there).
TableFn = Callable[[Sequence[str], Sequence[Sequence[object]]], list[str]]


def _when(unix: float) -> str:
    return utc_minute(unix) if unix else "-"


def _age(unix: float, now: float) -> str:
    if not unix:
        return "-"
    seconds = max(0.0, now - unix)  # a key made while the report was being written is 0 hours old
    return f"{seconds / 86400:.0f} days" if seconds >= 86400 else f"{seconds / 3600:.1f} hours"


def _person(who: str, names: Mapping[str, str]) -> str:
    """A user id (or an anomaly's "actor:<id>") as its name (an erased account's stays an id); an
    address or a service as it is."""
    return names.get(who) or names.get(user_in(who)) or who or "-"


_USER_ID = re.compile(r"\b[0-9a-f]{32}\b")  # auth's user ids, as the detector's sentences name them


def _named(text: str, names: Mapping[str, str]) -> str:
    """A sentence with each account's id as its name: findings keep ids (a name must not outlive an
    erasure), the report shows people."""
    return _USER_ID.sub(lambda m: names.get(m.group(), m.group()), text)


def render_sections(facts: SecurityFacts, *, since: float, now: float, table: TableFn) -> list[str]:
    return [
        *_encryption(facts, now, table),
        *_mfa(facts, table),
        *_retention(facts, table),
        *_backups(facts, now, table),
        *_erasures(facts, since, table),
        *_security_events(facts, since, table),
    ]


def _encryption(facts: SecurityFacts, now: float, table: TableFn) -> list[str]:
    lines = [
        "## Encryption and key ages",
        "",
        "- At rest: every archived event is sealed with AES-256-GCM under a data key per user, channel or the "
        "system, wrapped by storage's key-encryption key (KEK, `secrets/storage-kek.json`); backups are "
        "AES-256-GCM under a content key wrapped by the backup key, and signed. Auth's secrets on its stream "
        "(password hashes, TOTP secrets, recovery and refresh-token digests) are AES-256-GCM under its MFA key.",
        "- In transit: gRPC between services with mutual TLS from the platform's local CA; NATS over TLS with "
        "per-service credentials; clients over TLS to the gateway.",
        "- Signatures: access tokens and audit records with Ed25519 (separate keys), this report with its own.",
        "",
    ]
    if facts.kek_rotations:
        at, kek = facts.kek_rotations[-1]
        lines.append(
            f"Last KEK rotation: {_when(at)} ({_age(at, now)} ago), now KEK `{kek}`; "
            f"{len(facts.kek_rotations)} rotation(s) archived (erasures rotate it too)."
        )
    else:
        lines.append("Last KEK rotation: none archived (the KEK is the one made at the first start).")
    lines.append("")
    rows = [
        (k.what, k.key_id, _when(k.since), _age(k.since, now), _when(k.until) if k.until else "-", k.state)
        for k in [*facts.keys, *facts.certificates]
    ]
    return lines + table(("key", "id", "since", "age", "expires", "state"), rows)


def _mfa(facts: SecurityFacts, table: TableFn) -> list[str]:
    lines = ["## MFA coverage", ""]
    accounts = sum(c.accounts for c in facts.mfa)
    covered = sum(c.with_second_factor for c in facts.mfa)
    share = f"{100 * covered / accounts:.0f}%" if accounts else "-"
    lines += [f"{covered} of {accounts} accounts ({share}) have a second factor (TOTP).", ""]
    if facts.synthetic:
        lines += [
            f"Not counted: {facts.synthetic} synthetic account(s), the platform's own roll-out probers "
            f"(`{PROBER_NAME_PREFIX}…`, registered by the platform identity, which no person logs in as).",
            "",
        ]
    rows = [
        (
            c.role,
            c.accounts,
            c.with_second_factor,
            f"{100 * c.with_second_factor / c.accounts:.0f}%" if c.accounts else "-",
            "required" if c.required else "optional",
        )
        for c in facts.mfa
    ]
    return lines + table(("role", "accounts", "with a second factor", "share", "policy"), rows)


def _retention(facts: SecurityFacts, table: TableFn) -> list[str]:
    lines = ["## Retention policies in force", ""]
    if not facts.retention:
        return [*lines, "None: every channel keeps its messages (no retention policy is set).", ""]
    rows = [
        (p.channel_id, f"{p.days} days", p.set_by, _when(p.set_at.seconds + p.set_at.nanos / 1e9))
        for p in facts.retention
    ]
    return lines + table(("channel", "messages kept", "set by", "set at"), rows)


def _backups(facts: SecurityFacts, now: float, table: TableFn) -> list[str]:
    lines = ["## Backups", ""]
    created = [b for b in facts.backups if b.action == "created"]
    verified = [b for b in facts.backups if b.action == "verified"]

    def said(entries: Sequence[BackupEntry], verb: str) -> str:
        if not entries:
            return f"Last backup {verb}: none recorded in the backup journal."
        last = entries[-1]
        at = datetime.fromisoformat(last.at).timestamp()
        return (
            f"Last backup {verb}: {_when(at)} ({_age(at, now)} ago), backup `{last.backup_id}` of "
            f"{last.backup_created_at} in `{last.backup}`."
        )

    lines += [said(created, "created"), "", said(verified, "verified"), ""]
    if not facts.restores:
        return [*lines, "Restores: none recorded (a restore records EventLogRestored in the archive).", ""]
    rows = [(_when(r.at), r.backup_id, r.backup_created_at) for r in facts.restores]
    return [*lines, "Restores (each verified before it was made):", "", *table(("restored", "backup", "taken"), rows)]


def _erasures(facts: SecurityFacts, since: float, table: TableFn) -> list[str]:
    lines = ["## Erasures", ""]
    period = [e for e in facts.erasures if e.at >= since]
    lines += [f"{len(period)} erasure(s) in the period; {len(facts.erasures)} archived in all.", ""]
    if not period:
        return lines
    rows = [
        (
            _when(e.at),
            _person(e.user_id, facts.names),
            _person(e.erased_by, facts.names),
            e.reason or "-",
            e.archive_ref,
            f"SEC record #{e.audit_index}" if e.audit_index else "not yet in the audit chain",
        )
        for e in period
    ]
    return lines + table(("erased", "account", "by", "reason", "recorded", "audit reference"), rows)


# Kinds a reviewer must look at: failures, lockouts, revocations, privilege changes, the detector.
ATTENTION = (
    "login_failed",
    "mfa_failed",
    "step_up_failed",
    "lockout",
    "refresh_token_reuse",
    "session_revoked",
    "role_assigned",
    "account_disabled",
    "audit_record_forged",
    "anomaly_response_refused",
    "change_not_made",
)
LISTED = 200  # rows of the period's notable events; the counts cover them all


def _security_events(facts: SecurityFacts, since: float, table: TableFn) -> list[str]:
    lines = ["## Security events in the period", ""]
    every = [e for e in facts.events if e.at >= since]
    period = [e for e in every if not facts.synthetic_ids.intersection(e.accounts)]
    if len(period) < len(every):
        lines += [
            f"{len(every) - len(period)} event(s) of the platform's synthetic accounts (the roll-out probers) "
            "not counted.",
            "",
        ]
    if not period:
        return [*lines, "None recorded in the period.", ""]
    counts: dict[str, int] = {}
    for e in period:
        counts[e.kind] = counts.get(e.kind, 0) + 1
    lines += table(("kind", "count"), sorted(counts.items()))
    notable = [e for e in period if e.kind in ATTENTION or e.kind.startswith("anomaly:")]
    if not notable:
        return [*lines, "None of them a failure, lockout, revocation, role change or anomaly.", ""]
    shown = notable[-LISTED:]
    more = f" (the newest {LISTED} of {len(notable)})" if len(notable) > LISTED else ""
    lines += [f"Failures, lockouts, revocations, role changes and anomalies{more}:", ""]
    rows = [
        (_when(e.at), e.kind, _person(e.concerns, facts.names), _named(e.detail, facts.names) or "-", e.reference)
        for e in shown
    ]
    return lines + table(("when", "kind", "concerns", "detail", "reference"), rows)
