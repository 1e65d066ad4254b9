"""The compliance report's security sections: encryption and key ages, MFA coverage by role,
retention policies in force, backups, and erasures with their audit references.

Read as the platform identity, like the rest of the report: the archived AUTH, STORE and SEC
streams (through storage's archive API, secrets withheld), storage's retention policies, the
certificates in <data>/pki, the report key's file and the backup journal (parley_core.backup_journal).
The folding (`facts_from`) and rendering (`render_sections`) do no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from google.protobuf.message import Message
from parley.auth.v1 import events_pb2 as auth_events
from parley.storage.v1 import events_pb2 as storage_events
from parley.storage.v1 import storage_pb2, storage_pb2_grpc

from parley_cli.report_signing import key_id, load_or_create_signing_key
from parley_core import backup_journal
from parley_core.actor import Actor
from parley_core.audit_archive import archived_events, payload_of
from parley_core.backup_journal import BackupEntry
from parley_core.rbac import ROLES
from parley_core.synthetic import PROBER_NAME_PREFIX, is_synthetic_account

TIMEOUT_S = 30.0
REPORT_KEY = Path("secrets") / "report-signing-key.pem"
# compliance.py's Markdown table: headers and rows in, lines out (cells escaped there).
TableFn = Callable[[Sequence[str], Sequence[Sequence[object]]], list[str]]


@dataclass(frozen=True)
class KeyAge:
    what: str
    key_id: str
    since: float  # unix seconds: published, made or valid from (0: unknown)
    until: float = 0.0  # expiry (certificates), 0: none
    state: str = "in use"


@dataclass(frozen=True)
class RoleCoverage:
    role: str
    accounts: int
    with_second_factor: int
    required: bool


@dataclass(frozen=True)
class Erasure:
    user_id: str
    at: float
    erased_by: str
    reason: str
    archive_ref: str  # where storage recorded it: "STORE #<seq>"
    audit_index: int  # auth's `account_erased` audit record for it; 0 when none (yet)


@dataclass(frozen=True)
class Restore:
    at: float
    backup_id: str
    backup_created_at: str


@dataclass(frozen=True)
class SecurityEvent:
    """An audit record or an anomaly finding, for the period's security events."""

    at: float
    kind: str  # the record's kind, or "anomaly:<rule>"
    concerns: str  # the account (user id) or address it concerns
    detail: str
    reference: str  # "SEC record #N" or "STORE #seq"
    # The accounts it is about (the one concerned, the actor), to leave the platform's own out.
    accounts: tuple[str, ...] = ()


@dataclass(frozen=True)
class SecurityFacts:
    keys: Sequence[KeyAge] = ()
    kek_rotations: Sequence[tuple[float, str]] = ()  # (when, new KEK id), oldest first
    mfa: Sequence[RoleCoverage] = ()
    retention: Sequence[storage_pb2.RetentionPolicy] = ()
    erasures: Sequence[Erasure] = ()  # every one archived; the report lists those in its period
    backups: Sequence[BackupEntry] = ()
    restores: Sequence[Restore] = ()
    certificates: Sequence[KeyAge] = ()
    events: Sequence[SecurityEvent] = ()  # every audit record and finding archived, oldest first
    # Each account's name from its UserRegistered (an erased one's is gone), to show people by name.
    names: Mapping[str, str] = field(default_factory=dict)
    # The platform's own accounts (the roll-out probers, parley_core.synthetic): no person's, so
    # left out of MFA coverage and of the security events.
    synthetic: int = 0
    synthetic_ids: frozenset[str] = frozenset()


def _payloads(events: Iterable[storage_pb2.ArchivedEvent]) -> Iterable[tuple[storage_pb2.ArchivedEvent, Message]]:
    for event in events:
        payload = payload_of(event)
        if payload is not None:
            yield event, payload


def facts_from(
    *,
    auth: Sequence[storage_pb2.ArchivedEvent],
    store: Sequence[storage_pb2.ArchivedEvent],
    sec: Sequence[storage_pb2.ArchivedEvent],
    retention: Sequence[storage_pb2.RetentionPolicy],
    certificates: Sequence[KeyAge],
    report_key: KeyAge | None,
    backups: Sequence[BackupEntry],
) -> SecurityFacts:
    """Everything the sections say, folded from the archived streams and the files read."""
    keys: dict[str, KeyAge] = {}
    roles: dict[str, str] = {}
    second_factor: dict[str, bool] = {}
    required: dict[str, bool] = {}
    names: dict[str, str] = {}
    synthetic: set[str] = set()
    for event, payload in _payloads(auth):
        at = event.occurred_at_ns / 1e9
        if isinstance(payload, auth_events.SigningKeyPublished):
            keys[payload.key_id] = KeyAge("access-token signing key (Ed25519)", payload.key_id, at)
            if (old := keys.get(payload.replaces_key_id)) is not None and old.state == "in use":
                keys[old.key_id] = KeyAge(old.what, old.key_id, old.since, state=f"replaced by {payload.key_id}")
        elif isinstance(payload, auth_events.SigningKeyRetired) and payload.key_id in keys:
            old = keys[payload.key_id]
            keys[payload.key_id] = KeyAge(old.what, old.key_id, old.since, state="retired")
        elif isinstance(payload, auth_events.AuditKeyPublished):
            keys[payload.key_id] = KeyAge("audit record signing key (Ed25519)", payload.key_id, at)
        elif isinstance(payload, auth_events.UserRegistered):
            names[payload.user_id] = payload.username
            if is_synthetic_account(username=payload.username, registered_by=str(Actor.parse(event.actor))):
                synthetic.add(payload.user_id)
                continue
            roles[payload.user_id] = payload.role
            second_factor.setdefault(payload.user_id, False)
        elif isinstance(payload, auth_events.RoleAssigned) and payload.user_id not in synthetic:
            roles[payload.user_id] = payload.role
        elif isinstance(payload, auth_events.TotpEnrolled):
            second_factor[payload.user_id] = True
        elif isinstance(payload, auth_events.TotpReset):
            second_factor[payload.user_id] = False
        elif isinstance(payload, auth_events.MfaRequirementSet):
            required[payload.role] = payload.required
        elif isinstance(payload, auth_events.AccountErased):
            roles.pop(payload.user_id, None)
            synthetic.discard(payload.user_id)
    if report_key is not None:
        keys["report"] = report_key
    coverage = [
        RoleCoverage(
            role=role,
            accounts=sum(1 for r in roles.values() if r == role),
            with_second_factor=sum(1 for u, r in roles.items() if r == role and second_factor.get(u)),
            required=required.get(role, False),
        )
        for role in ROLES
    ]
    audit_erased: dict[str, int] = {}
    events: list[SecurityEvent] = []
    for event, payload in _payloads(sec):
        if not isinstance(payload, auth_events.SecurityEventRecorded):
            continue
        if payload.kind == "account_erased":
            audit_erased.setdefault(payload.user_id, int(payload.chain_index))
        events.append(
            SecurityEvent(
                at=event.occurred_at_ns / 1e9,
                kind=payload.kind,
                concerns=payload.user_id or payload.source,
                detail=payload.detail,
                reference=f"SEC record #{payload.chain_index}",
                accounts=(payload.user_id, Actor.parse(payload.actor).user_id),
            )
        )
    rotations: list[tuple[float, str]] = []
    erasures: list[Erasure] = []
    restores: list[Restore] = []
    for event, payload in _payloads(store):
        at = event.occurred_at_ns / 1e9
        if isinstance(payload, storage_events.KeyEncryptionKeyRotated):
            rotations.append((at, payload.new_kek_id))
        elif isinstance(payload, storage_events.UserDataErased):
            erasures.append(
                Erasure(
                    user_id=payload.user_id,
                    at=at,
                    erased_by=payload.erased_by,
                    reason=payload.reason,
                    archive_ref=f"STORE #{event.stream_seq}",
                    audit_index=audit_erased.get(payload.user_id, 0),
                )
            )
        elif isinstance(payload, storage_events.EventLogRestored):
            restores.append(Restore(at, payload.backup_id, payload.backup_created_at))
        elif isinstance(payload, storage_events.AnomalyDetected):
            events.append(
                SecurityEvent(
                    at=at,
                    kind=f"anomaly:{payload.kind}",
                    concerns=payload.user_id or payload.source or payload.subject,
                    detail=f"{payload.why} (response: {payload.response or 'alert'})",
                    reference=f"STORE #{event.stream_seq}",
                    accounts=(payload.user_id, _user_in(payload.subject)),
                )
            )
    return SecurityFacts(
        keys=sorted(keys.values(), key=lambda k: (k.what, k.since)),
        kek_rotations=rotations,
        mfa=coverage,
        retention=sorted(retention, key=lambda p: p.channel_id),
        erasures=erasures,
        backups=list(backups),
        restores=restores,
        certificates=certificates,
        events=sorted(events, key=lambda e: e.at),
        names=names,
        synthetic=len(synthetic),
        synthetic_ids=frozenset(synthetic),
    )


def _user_in(who: str) -> str:
    """The user id in an actor or an anomaly's subject ("user:<id>", "actor:<id>", a bare id)."""
    return who.removeprefix("user:").removeprefix("actor:")


def certificates_in(pki: Path) -> list[KeyAge]:
    """The platform's TLS certificates (its local CA and each identity's), valid from and until."""
    found = []
    for path in sorted(pki.glob("*.crt")):
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError):
            found.append(KeyAge("TLS certificate", path.name, 0.0, state="UNREADABLE"))
            continue
        found.append(
            KeyAge(
                "TLS certificate (CA)" if path.stem == "ca" else "TLS certificate",
                path.stem,
                cert.not_valid_before_utc.timestamp(),
                cert.not_valid_after_utc.timestamp(),
            )
        )
    return found


async def gather_security(storage: storage_pb2_grpc.StorageArchiveServiceAsyncStub, data_dir: Path) -> SecurityFacts:
    async def read(request: storage_pb2.ReadArchivedStreamRequest) -> storage_pb2.ArchivedEventsPage:
        return await storage.ReadArchivedStream(request, timeout=TIMEOUT_S)

    retention = await storage.ListRetentionPolicies(storage_pb2.ListRetentionPoliciesRequest(), timeout=TIMEOUT_S)
    report_key = data_dir / REPORT_KEY
    if report_key.exists():  # made with the first report; not made by reading
        public = load_or_create_signing_key(data_dir).public_key()
        made = KeyAge("compliance report signing key (Ed25519)", key_id(public), report_key.stat().st_mtime)
    return facts_from(
        auth=await archived_events(read, "AUTH"),
        store=await archived_events(read, "STORE"),
        sec=await archived_events(read, "SEC"),
        retention=list(retention.policies),
        certificates=certificates_in(data_dir / "pki"),
        report_key=made if report_key.exists() else None,
        backups=backup_journal.read(data_dir),
    )


# -- rendering (no I/O) ----------------------------------------------------------------------


def _when(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M UTC") if unix else "-"


def _age(unix: float, now: float) -> str:
    if not unix:
        return "-"
    seconds = max(0.0, now - unix)  # a key made while the report was being written is 0 hours old
    return f"{seconds / 86400:.0f} days" if seconds >= 86400 else f"{seconds / 3600:.1f} hours"


def _person(who: str, names: Mapping[str, str]) -> str:
    """A user id (or an anomaly's "actor:<id>") as its name (an erased account's stays an id); an
    address or a service as it is."""
    return names.get(who) or names.get(_user_in(who)) or who or "-"


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
