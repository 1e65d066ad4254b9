"""Auth's state, rebuilt from the AUTH stream: accounts, sessions, lockouts, MFA, invites, device
keys, signing and audit keys, erasures. No I/O: every event type has one applier in one table
(`APPLIERS`); sealed fields are opened with the in-memory sealing key, and nothing here reads a
file (adopting a successor signing key is the key-maintenance job's, signing_key_job.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from google.protobuf.message import Message
from parley.auth.v1.events_pb2 import (
    AccountDisabled,
    AccountEnabled,
    AccountErased,
    AccountErasureRequested,
    AuditKeyPublished,
    DeviceKeysPublished,
    DeviceRemoved,
    InviteCreated,
    InviteRedeemed,
    LoginFailureCounted,
    LoginFailuresCleared,
    MfaRequirementSet,
    OneTimeKeyClaimed,
    OneTimeKeysUploaded,
    PasswordChanged,
    RecoveryCodesRegenerated,
    RecoveryCodeUsed,
    RefreshTokenRotated,
    RoleAssigned,
    SessionRevoked,
    SessionStarted,
    SessionStepUpRequired,
    SigningKeyPublished,
    SigningKeyRetired,
    SourceSlowdownLifted,
    SourceSlowed,
    TotpCodeAccepted,
    TotpEnrolled,
    TotpEnrolmentStarted,
    TotpReset,
    UserRegistered,
)

from parley_auth import keys, mfa
from parley_auth.anomaly_evidence import DetectionWindows, EvidenceRules
from parley_auth.domain import Account, AccountDirectory, username_key
from parley_auth.key_rotation import SigningKeyState
from parley_auth.lockout import LockoutBook
from parley_auth.log_gaps import SubjectVersions
from parley_auth.sealing import (
    PASSWORD_HASH,
    RECOVERY_CODE,
    RECOVERY_CODES,
    REFRESH_TOKEN,
    SealedFieldUnreadable,
    SecretSealer,
    digests,
)
from parley_auth.sessions import Session, SessionBook
from parley_core.bus import ReceivedEvent
from parley_core.contracts import AUTH_SEALING_KEY_FILE
from parley_core.envelope import open_payload
from parley_core.sources import budget_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recorded:
    """Where an event sits in the log: what an applier needs besides the payload."""

    subject: str
    stream_seq: int
    aggregate_id: str
    aggregate_version: int
    event_id: str
    at: float  # occurred_at, in Unix seconds

    @classmethod
    def of(cls, event: ReceivedEvent) -> Recorded:
        envelope = event.envelope
        return cls(
            subject=event.subject,
            stream_seq=event.stream_seq,
            aggregate_id=envelope.aggregate_id,
            aggregate_version=envelope.aggregate_version,
            event_id=envelope.event_id,
            at=envelope.occurred_at.ToNanoseconds() / 1e9,
        )


@dataclass
class InviteState:
    role: str
    expires_at_unix: int
    redeemed: bool = False
    last_seq: int = 0


@dataclass
class AuthProjection:
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

    def apply_received(self, event: ReceivedEvent) -> Message:
        """The event from the stream, applied; returns its payload."""
        payload = open_payload(event.envelope)
        self.apply(payload, Recorded.of(event))
        return payload

    def apply(self, payload: Message, at: Recorded) -> None:
        self.subject_versions.see(at.subject, at.aggregate_version, str(getattr(payload, "user_id", "")))
        applier = APPLIERS.get(type(payload))
        if applier is not None:  # an event type auth keeps nothing of
            applier(self, payload, at)

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


Applier = Callable[[AuthProjection, Any, Recorded], None]
APPLIERS: dict[type[Message], Applier] = {}
F = TypeVar("F", bound=Applier)


def applies(*types: type[Message]) -> Callable[[F], F]:
    def register(applier: F) -> F:
        for event_type in types:
            assert event_type not in APPLIERS, f"two appliers of {event_type.__name__}"
            APPLIERS[event_type] = applier
        return applier

    return register


# -- accounts ------------------------------------------------------------------------------------


@applies(UserRegistered)
def _registered(p: AuthProjection, event: UserRegistered, at: Recorded) -> None:
    password_hash = p._password_hash(event.sealed_password_hash, event.password_hash, event.user_id)
    p.accounts.add(Account(event.user_id, event.username, password_hash, event.role))
    p.username_holders[username_key(event.username)] = event.user_id


@applies(AccountErasureRequested)
def _erasure_requested(p: AuthProjection, event: AccountErasureRequested, at: Recorded) -> None:
    p.erasure_requests.add(event.user_id)


@applies(AccountErased)
def _erased(p: AuthProjection, event: AccountErased, at: Recorded) -> None:
    # Its events are being deleted from the stream; its name stays taken (see AccountErased).
    p.accounts.forget(event.user_id)
    p.erasure_markers.add(at.event_id)
    p.erased_users.add(event.user_id)
    p.subject_versions.erased(event.user_id)


UserApplier = Callable[[AuthProjection, Account, mfa.MfaState, Any], None]


def _on_user(*types: type[Message]) -> Callable[[UserApplier], UserApplier]:
    """An event on an account's own subject: counted on its version (for optimistic appends),
    then applied to the account and its MFA state. One for an erased account is dropped."""

    def register(applier: UserApplier) -> UserApplier:
        def apply(p: AuthProjection, event: Any, at: Recorded) -> None:
            account = p.accounts.by_id(event.user_id)
            if account is None:
                return
            # The version from the envelope, not counted: an erasure leaves gaps in the stream.
            account.user_seq = at.stream_seq
            account.user_version = max(account.user_version, at.aggregate_version)
            applier(p, account, p.mfa.setdefault(account.user_id, mfa.MfaState()), event)

        applies(*types)(apply)
        return applier

    return register


@_on_user(RoleAssigned)
def _role(p: AuthProjection, account: Account, state: mfa.MfaState, event: RoleAssigned) -> None:
    account.role = event.role


@_on_user(AccountDisabled)
def _disabled(p: AuthProjection, account: Account, state: mfa.MfaState, event: AccountDisabled) -> None:
    account.disabled = True


@_on_user(AccountEnabled)
def _enabled(p: AuthProjection, account: Account, state: mfa.MfaState, event: AccountEnabled) -> None:
    account.disabled = False


@_on_user(PasswordChanged)
def _password(p: AuthProjection, account: Account, state: mfa.MfaState, event: PasswordChanged) -> None:
    account.password_hash = p._password_hash(event.sealed_password_hash, event.password_hash, account.user_id)


@_on_user(TotpEnrolmentStarted)
def _totp_started(p: AuthProjection, account: Account, state: mfa.MfaState, event: TotpEnrolmentStarted) -> None:
    state.pending_secret = event.sealed_secret


@_on_user(TotpEnrolled)
def _totp_enrolled(p: AuthProjection, account: Account, state: mfa.MfaState, event: TotpEnrolled) -> None:
    state.secret, state.pending_secret = state.pending_secret, b""
    state.recovery = p._recovery_set(event, account.user_id)


@_on_user(TotpCodeAccepted)
def _code_accepted(p: AuthProjection, account: Account, state: mfa.MfaState, event: TotpCodeAccepted) -> None:
    state.last_step = max(state.last_step, event.time_step)


@_on_user(RecoveryCodeUsed)
def _recovery_used(p: AuthProjection, account: Account, state: mfa.MfaState, event: RecoveryCodeUsed) -> None:
    used = event.recovery_code_sha256
    if event.sealed_recovery_code_sha256:
        used = p.unsealed(event.sealed_recovery_code_sha256, b"", RECOVERY_CODE, account.user_id)
    state.recovery.discard(used)


@_on_user(TotpReset)
def _totp_reset(p: AuthProjection, account: Account, state: mfa.MfaState, event: TotpReset) -> None:
    # Single use is per secret: the next enrolment's secret starts its own count.
    p.mfa[account.user_id] = mfa.MfaState()


@_on_user(RecoveryCodesRegenerated)
def _recovery_regenerated(
    p: AuthProjection, account: Account, state: mfa.MfaState, event: RecoveryCodesRegenerated
) -> None:
    state.recovery = p._recovery_set(event, account.user_id)


@applies(MfaRequirementSet)
def _mfa_policy(p: AuthProjection, event: MfaRequirementSet, at: Recorded) -> None:
    if event.required:
        p.mfa_required_roles.add(event.role)
    else:
        p.mfa_required_roles.discard(event.role)


# -- invitations -------------------------------------------------------------------------------


@applies(InviteCreated)
def _invite_created(p: AuthProjection, event: InviteCreated, at: Recorded) -> None:
    p.invites[event.invite_sha256] = InviteState(event.role, event.expires_at_unix, last_seq=at.stream_seq)


@applies(InviteRedeemed)
def _invite_redeemed(p: AuthProjection, event: InviteRedeemed, at: Recorded) -> None:
    if (invite := p.invites.get(event.invite_sha256)) is not None:
        invite.redeemed, invite.last_seq = True, at.stream_seq


# -- failed logins and slowed addresses (lockout.py) -----------------------------------------------


@applies(LoginFailureCounted)
def _failure(p: AuthProjection, event: LoginFailureCounted, at: Recorded) -> None:
    p.lockouts.record_failure(event.account_key, budget_key(event.source), at=at.at)


@applies(LoginFailuresCleared)
def _failures_cleared(p: AuthProjection, event: LoginFailuresCleared, at: Recorded) -> None:
    p.lockouts.record_success(event.account_key, budget_key(event.source) if event.source else "")


@applies(SourceSlowed)
def _slowed(p: AuthProjection, event: SourceSlowed, at: Recorded) -> None:
    p.lockouts.slow(budget_key(event.source), event.until_unix)


@applies(SourceSlowdownLifted)
def _slowdown_lifted(p: AuthProjection, event: SourceSlowdownLifted, at: Recorded) -> None:
    p.lockouts.lift(budget_key(event.source), event.lifted_until)


# -- sessions ------------------------------------------------------------------------------------


@applies(SessionStarted)
def _session_started(p: AuthProjection, event: SessionStarted, at: Recorded) -> None:
    earlier = p.sessions.of_user(event.user_id)
    p.sessions.sessions[event.session_id] = Session(
        session_id=event.session_id,
        user_id=event.user_id,
        started_at=at.at,
        source=event.source,
        first_from_source=bool(earlier) and all(s.source != event.source for s in earlier),
        last_source=event.source,
        mfa=event.mfa,
        current=p.unsealed(
            event.sealed_refresh_token_sha256, event.refresh_token_sha256, REFRESH_TOKEN, event.session_id
        ),
        last_refreshed_at=at.at,
        last_seq=at.stream_seq,
        version=1,
    )


def _session_changed(p: AuthProjection, session_id: str, at: Recorded) -> Session | None:
    session = p.sessions.get(session_id)
    if session is not None:
        session.last_seq, session.version = at.stream_seq, session.version + 1
    return session


@applies(RefreshTokenRotated)
def _refreshed(p: AuthProjection, event: RefreshTokenRotated, at: Recorded) -> None:
    if (session := _session_changed(p, event.session_id, at)) is None:
        return
    _note_source(p, session, event.source, at.at)
    owner = event.session_id
    previous = p.unsealed(event.sealed_previous_sha256, event.previous_sha256, REFRESH_TOKEN, owner)
    current = p.unsealed(event.sealed_refresh_token_sha256, event.refresh_token_sha256, REFRESH_TOKEN, owner)
    session.rotate(previous, current, at.at)


def _note_source(p: AuthProjection, session: Session, source: str, at: float) -> None:
    """A refresh from another address than the session's last use, soon after it: what the
    two-sources rule counts, and so what its response must find (anomaly_evidence.py)."""
    if not source:
        return
    window = p.evidence.windows.two_sources_window_s
    if session.last_source and source != session.last_source and at - session.last_refreshed_at <= window:
        session.switched_source_at = at
    session.last_source = source


@applies(SessionRevoked)
def _session_revoked(p: AuthProjection, event: SessionRevoked, at: Recorded) -> None:
    if (session := _session_changed(p, event.session_id, at)) is not None:
        session.revoked_reason = event.reason or "revoked"


@applies(SessionStepUpRequired)
def _step_up_required(p: AuthProjection, event: SessionStepUpRequired, at: Recorded) -> None:
    if (session := _session_changed(p, event.session_id, at)) is not None:
        session.step_up_required = True


# -- signing and audit keys -------------------------------------------------------------------------


@applies(AuditKeyPublished)
def _audit_key(p: AuthProjection, event: AuditKeyPublished, at: Recorded) -> None:
    p.published_keys.append(event)
    p.audit_keys.add(event.key_id)


@applies(SigningKeyPublished)
def _signing_key_published(p: AuthProjection, event: SigningKeyPublished, at: Recorded) -> None:
    p.published_keys.append(event)
    p.signing_keys.setdefault(event.key_id, SigningKeyState(at.at, replaces=event.replaces_key_id))
    _signing_key_subject_changed(p, at)


@applies(SigningKeyRetired)
def _signing_key_retired(p: AuthProjection, event: SigningKeyRetired, at: Recorded) -> None:
    if (retired := p.signing_keys.get(event.key_id)) is not None:
        retired.retired = True
    _signing_key_subject_changed(p, at)


def _signing_key_subject_changed(p: AuthProjection, at: Recorded) -> None:
    # A successor is published on the subject of the key it replaces.
    if (subject_key := p.signing_keys.get(at.aggregate_id)) is not None:
        subject_key.last_seq, subject_key.version = at.stream_seq, subject_key.version + 1


# -- E2EE device keys ------------------------------------------------------------------------------


@applies(DeviceKeysPublished)
def _device_published(p: AuthProjection, event: DeviceKeysPublished, at: Recorded) -> None:
    device = keys.DeviceRecord(
        user_id=event.user_id,
        device_id=event.device_id,
        curve25519=event.curve25519,
        ed25519=event.ed25519,
        signature=event.signature,
        display_name=event.display_name,
    )
    p.keys.devices[(event.user_id, event.device_id)] = device
    device.last_seq, device.version = at.stream_seq, device.version + 1


@applies(DeviceRemoved)
def _device_removed(p: AuthProjection, event: DeviceRemoved, at: Recorded) -> None:
    p.keys.devices.pop((event.user_id, event.device_id), None)
    p.keys.removed.add((event.user_id, event.device_id))


@applies(OneTimeKeysUploaded)
def _keys_uploaded(p: AuthProjection, event: OneTimeKeysUploaded, at: Recorded) -> None:
    if (device := p.keys.get(event.user_id, event.device_id)) is None:
        return
    for k in event.keys:
        device.unclaimed[k.key_id] = keys.StoredKey(k.key_id, k.key, k.signature)
        device.seen_key_ids.add(k.key_id)
    if event.HasField("fallback_key"):
        fb = event.fallback_key
        device.fallback = keys.StoredKey(fb.key_id, fb.key, fb.signature)
        device.seen_key_ids.add(fb.key_id)
    device.last_seq, device.version = at.stream_seq, device.version + 1


@applies(OneTimeKeyClaimed)
def _key_claimed(p: AuthProjection, event: OneTimeKeyClaimed, at: Recorded) -> None:
    if (device := p.keys.get(event.user_id, event.device_id)) is None:
        return
    device.unclaimed.pop(event.key_id, None)
    device.last_seq, device.version = at.stream_seq, device.version + 1
