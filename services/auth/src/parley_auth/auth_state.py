"""What auth's projection holds (accounts, sessions, lockouts, MFA, invites, device keys,
signing and audit keys, erasures), and how it opens a sealed field. The appliers (apply_*.py)
change it; projection.py hands each event to its applier."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from parley.auth.v1.events_pb2 import (
    AuditKeyPublished,
    RecoveryCodesRegenerated,
    SigningKeyPublished,
    TotpEnrolled,
)

from parley_auth import keys, mfa
from parley_auth.accounts import AccountDirectory
from parley_auth.anomaly_evidence import DetectionWindows, EvidenceRules
from parley_auth.key_rotation import SigningKeyState
from parley_auth.lockout import LockoutBook
from parley_auth.log_gaps import SubjectVersions
from parley_auth.sealing import (
    PASSWORD_HASH,
    RECOVERY_CODES,
    SealedFieldUnreadable,
    SecretSealer,
    digests,
)
from parley_auth.sessions import SessionBook
from parley_core.contracts import AUTH_SEALING_KEY_FILE

log = logging.getLogger(__name__)


@dataclass
class InviteState:
    role: str
    expires_at_unix: int
    redeemed: bool = False
    last_seq: int = 0


@dataclass
class AuthState:
    """Everything auth decides from. Attributes are mutated in place, never rebound, so a holder
    of one (the servicer, storage_due.py) sees every change."""

    lockouts: LockoutBook
    evidence: EvidenceRules = field(default_factory=lambda: EvidenceRules(DetectionWindows()))
    # Opens the sealed fields; None until the service loaded its key (plain fields still apply).
    sealer: SecretSealer | None = None
    accounts: AccountDirectory = field(default_factory=AccountDirectory)
    sessions: SessionBook = field(default_factory=SessionBook)
    mfa: dict[str, mfa.MfaState] = field(default_factory=dict)
    mfa_required_roles: set[str] = field(default_factory=set)
    keys: keys.KeyDirectory = field(default_factory=keys.KeyDirectory)
    signing_keys: dict[str, SigningKeyState] = field(default_factory=dict)
    invites: dict[bytes, InviteState] = field(default_factory=dict)
    audit_keys: set[str] = field(default_factory=set)  # published audit key ids
    # What audit records verify with.
    published_keys: list[AuditKeyPublished | SigningKeyPublished] = field(default_factory=list)
    # Who holds each username subject, and the erasure tombstones applied (storage_due.py).
    username_holders: dict[str, str] = field(default_factory=dict)
    erasure_markers: set[str] = field(default_factory=set)
    erased_users: set[str] = field(default_factory=set)  # accounts auth tombstoned: only theirs leave AUTH
    erasure_requests: set[str] = field(default_factory=set)  # accounts whose erasure was requested through auth
    subject_versions: SubjectVersions = field(default_factory=SubjectVersions)  # holes in the log (log_gaps.py)

    # -- sealed fields: every service reads AUTH, only auth opens them --------------------------

    def unsealed(self, sealed: bytes, plain: bytes, field: str, owner: str) -> bytes:
        """The value from its sealed field; from the plaintext one in an event written before
        auth sealed it. One that does not open (another key: secrets/auth-mfa-key.bin is not
        this event log's) is empty, which matches nothing: that account cannot log in."""
        if not sealed:
            return plain
        assert self.sealer is not None, "the sealing key is loaded before the replay"
        try:
            return self.sealer.open_field(sealed, field=field, owner=owner)
        except SealedFieldUnreadable as exc:
            log.error("%s: restore the data folder's %s from the key backup", exc, AUTH_SEALING_KEY_FILE)
            return b""

    def _password_hash(self, sealed: bytes, plain: str, user_id: str) -> str:
        return self.unsealed(sealed, plain.encode(), PASSWORD_HASH, user_id).decode()

    def _recovery_set(self, payload: TotpEnrolled | RecoveryCodesRegenerated, user_id: str) -> set[bytes]:
        if payload.sealed_recovery_codes:
            return digests(self.unsealed(payload.sealed_recovery_codes, b"", RECOVERY_CODES, user_id))
        return set(payload.recovery_code_sha256)
