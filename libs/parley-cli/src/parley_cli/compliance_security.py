"""The facts behind the compliance report's security sections (rendered by security_sections):
keys and their ages, MFA coverage by role, retention policies in force, backups, erasures with
their audit references, and the period's security events.

Read as the platform identity, like the rest of the report: the archived AUTH, STORE and SEC
streams (through storage's archive API, secrets withheld), storage's retention policies, the
certificates in <data>/pki, the report key's file and the backup journal (parley_core.backup_journal).
The folding (`facts_from`) does no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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
from parley_core.synthetic import is_synthetic_account

TIMEOUT_S = 30.0
REPORT_KEY = Path("secrets") / "report-signing-key.pem"


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
    retention: Sequence[storage_pb2.RetentionPolicy] = (),
    certificates: Sequence[KeyAge] = (),
    report_key: KeyAge | None = None,
    backups: Sequence[BackupEntry] = (),
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
                    accounts=(payload.user_id, user_in(payload.subject)),
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


def user_in(who: str) -> str:
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
