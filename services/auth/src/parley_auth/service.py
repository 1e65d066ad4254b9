"""The auth service's composition: projection, commands and the gRPC servicer.

Permissions are checked before a handler runs (parley_core.rbac.METHOD_PERMISSIONS, in the
runner's interceptor); handlers check what depends on the target (whose session, which role).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import nats.errors
from google.protobuf.message import Message
from parley.auth.v1 import auth_pb2, auth_pb2_grpc
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
    SecurityEventRecorded,
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
    UploadedOneTimeKey,
    UserRegistered,
)
from prometheus_client import Counter

from parley_auth import keys, mfa
from parley_auth.anomaly_evidence import DetectionWindows, EvidenceRules
from parley_auth.audit_key import AUDIT_KEY_FILE, AuditSigner
from parley_auth.domain import (
    DEFAULT_ROLE,
    MAX_PASSWORD_LENGTH,
    USERNAME_UNAVAILABLE,
    Account,
    AccountDirectory,
    check_name_claimable,
    check_password_policy,
    is_reserved,
    normalize_username,
    username_key,
    validate_role,
)
from parley_auth.key_rotation import KeySchedule, SigningKeyState, key_in_use, replaced_at
from parley_auth.lockout import LockoutBook, Scope
from parley_auth.log_gaps import SubjectVersions
from parley_auth.passwords import hash_password, needs_rehash, verify_password
from parley_auth.sealing import (
    PASSWORD_HASH,
    RECOVERY_CODE,
    RECOVERY_CODES,
    REFRESH_TOKEN,
    SealedFieldUnreadable,
    SecretSealer,
    digests,
)
from parley_auth.sessions import (
    REFRESH_TOKEN_LIFETIME_S,
    RefreshVerdict,
    Session,
    SessionBook,
    digest,
    new_refresh_token,
    session_id_of,
)
from parley_auth.settings import AuthSettings
from parley_auth.signing import TokenIssuer
from parley_auth.storage_due import StorageDue
from parley_core.audit import AuditChain, TrustedKeys, trusted_keys
from parley_core.audit_log import SEC_STREAM, ChainHead, chain_head
from parley_core.bus import ConcurrencyConflict, DurableConsumer, ReceivedEvent, Replay
from parley_core.config import AUTH_SEALING_KEY_FILE
from parley_core.envelope import NewEvent, open_payload
from parley_core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from parley_core.rate import TokenBuckets
from parley_core.rbac import ACCOUNT_ACTION_PERMISSIONS, AccountAction, Permission, may_act_on_account, may_assign
from parley_core.runner import RefusedToStart, RunContext, peer_names
from parley_core.sources import MAX_SOURCE_LENGTH, SOURCE_METADATA, budget_key, client_address, is_address
from parley_core.tokens import ALGORITHM, Caller, bearer_token
from parley_core.topology import (
    CONSUMERS,
    PLATFORM_USER,
    audit_key_subject,
    erasure_request_subject,
    lockout_subject,
    signing_key_subject,
    slowed_source_subject,
    stream_subject,
    user_subject,
    username_subject,
)

USER_EVENTS = (
    RoleAssigned,
    AccountDisabled,
    AccountEnabled,
    PasswordChanged,
    TotpEnrolmentStarted,
    TotpEnrolled,
    TotpCodeAccepted,
    RecoveryCodeUsed,
    TotpReset,
    RecoveryCodesRegenerated,
)
DEVICE_EVENTS = (DeviceKeysPublished, OneTimeKeysUploaded, OneTimeKeyClaimed, DeviceRemoved)
MAX_USERS_PER_DEVICE_LIST = 100
MAX_USERS_PER_LOOKUP = 200  # a screenful of people; ids are random, so this is no enumeration
MFA_POLICY_SUBJECT = stream_subject("auth", "policy", "mfa")
APPEND_ATTEMPTS = 5
# Where the current call comes from, for the audit records it writes (one value per call task).
REQUEST_SOURCE: ContextVar[str] = ContextVar("request_source", default="")
INVITE_DEFAULT_HOURS = 72
INVITE_MAX_HOURS = 720
# Erasures storage recorded for auth are marked before it serves, for at most this long.
DUE_CATCH_UP_S = 30.0
# The signing-key schedule is re-read at least this often, and after a failure not sooner than:
KEY_MAINTENANCE_MAX_WAIT_S = 3600.0
KEY_MAINTENANCE_RETRY_S = 5.0
# A rotation's successor carries its private key sealed under this field name (SecretSealer).
SEALED_SIGNING_KEY_FIELD = "signing_private_key"


def invite_subject(invite_sha256: bytes) -> str:
    return stream_subject("auth", "invite", invite_sha256.hex())


@dataclass
class InviteState:
    role: str
    expires_at_unix: int
    redeemed: bool = False
    last_seq: int = 0


def device_subject(user_id: str, device_id: str) -> str:
    return stream_subject("auth", "device", f"{user_id}.{device_id}")


def device_proto(device: keys.DeviceRecord) -> auth_pb2.Device:
    return auth_pb2.Device(
        user_id=device.user_id,
        device_id=device.device_id,
        curve25519=device.curve25519,
        ed25519=device.ed25519,
        signature=device.signature,
        display_name=device.display_name,
        one_time_keys_left=len(device.unclaimed),
        has_fallback_key=device.fallback is not None,
    )


log = logging.getLogger(__name__)

LOGIN_FAILED = "username or password is wrong"
# Conflicts on SEC are other auth instances' records (each retry re-reads the head and links
# again); past this many in a row the call fails rather than go unrecorded.
AUDIT_APPEND_ATTEMPTS = 20
# After start, a conflict on SEC reads at most this many of the newest messages for another
# instance's record: anyone who may publish there (auth's NATS password) can pile junk on the
# stream, and a login must not wait for auth to read it all (the start reads the whole stream).
AUDIT_HEAD_SCAN_LIMIT = 256
MAX_NOT_MADE_DETAIL = 200
REFRESH_INVALID = "refresh token is invalid or expired; log in again"
MAX_ID_LENGTH = 64
MAX_REASON_LENGTH = 500

Context = grpc.aio.ServicerContext[Any, Any]


def utc_text(unix: float) -> str:
    """A time as audit records state it: read by people (`audit query`), so not epoch seconds."""
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def session_subject(session_id: str) -> str:
    return stream_subject("auth", "session", session_id)


def security_subject(kind: str, user_id: str) -> str:
    return f"parley.sec.{kind}.{user_id or 'unknown'}"


def _id(value: str, what: str) -> str:
    if not value or len(value) > MAX_ID_LENGTH or not value.isalnum():
        raise InvalidArgument(f"{what} is required: up to {MAX_ID_LENGTH} letters and digits")
    return value


def check_account_action(caller: Caller | None, action: AccountAction, target: Account | None) -> None:
    """rbac's one rule for acting on another account, worded for the caller; the platform
    identity (None) is the operator's and passes. A target account erased since is no owner."""
    if caller is None:
        return
    caller.require(ACCOUNT_ACTION_PERMISSIONS[action], what=f"a request to {action} another user")
    target_role = target.role if target is not None else ""
    if not may_act_on_account(caller.role, action, target_role=target_role):
        raise PermissionDenied(f"only an owner may {action} an owner")


def _read(account: Account) -> tuple[int, int]:
    """The account's version and sequence now: what a change decided now is appended at."""
    return account.user_version, account.user_seq


def account_proto(account: Account, lockouts: LockoutBook | None = None) -> auth_pb2.Account:
    """The account; with `lockouts`, also whether failed logins lock it out now (admin views)."""
    proto = auth_pb2.Account(
        user_id=account.user_id, username=account.username, role=account.role, disabled=account.disabled
    )
    if lockouts is not None:
        addresses, until = lockouts.account_lockouts(account.username)
        proto.locked_addresses, proto.locked_until_unix = addresses, math.ceil(until)
    return proto


def session_proto(session: Session) -> auth_pb2.Session:
    return auth_pb2.Session(
        session_id=session.session_id,
        user_id=session.user_id,
        started_at_unix=int(session.started_at),
        last_refreshed_at_unix=int(session.last_refreshed_at),
        revoked=session.revoked,
        revoked_reason=session.revoked_reason,
        source=session.source,
    )


class AuthApp(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, settings: AuthSettings | None = None) -> None:
        self.settings = settings or AuthSettings()
        self.key_schedule = KeySchedule(
            rotation_s=self.settings.signing_key_rotation_seconds, token_lifetime_s=self.settings.access_token_seconds
        )
        self.accounts = AccountDirectory()
        self.sessions = SessionBook()
        self.lockouts = LockoutBook(
            pair_policy=self.settings.lockout_policy(per_source=False),
            source_policy=self.settings.lockout_policy(per_source=True),
        )
        per_hour = self.settings.registrations_per_source_per_hour
        self.registrations = TokenBuckets(rate=per_hour / 3600, burst=per_hour)
        self.mfa: dict[str, mfa.MfaState] = {}
        self.mfa_required_roles: set[str] = set()
        self.keys = keys.KeyDirectory()
        self.signing_keys: dict[str, SigningKeyState] = {}
        self._signing_keys_changed = asyncio.Event()
        self._stopping = False
        self._key_maintenance: asyncio.Task[None] | None = None
        self.invites: dict[bytes, InviteState] = {}
        self._device_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._sealer: SecretSealer | None = None
        self._audit_signer: AuditSigner | None = None
        self.audit_keys: set[str] = set()  # published audit key ids
        self._published_keys: list[AuditKeyPublished | SigningKeyPublished] = []  # what audit records verify with
        self.sec_messages_read = 0  # by the audit head lookups (a flood on SEC must not grow a login's share)
        self._audit = AuditChain()
        self._audit_lock = asyncio.Lock()
        self._sec_last_seq = 0
        self._ctx: RunContext | None = None
        self._issuer: TokenIssuer | None = None
        self._replay: Replay | None = None
        # Who holds each username subject, and the erasure tombstones applied (storage_due.py).
        self.username_holders: dict[str, str] = {}
        self.erasure_markers: set[str] = set()
        # What a detector's response must find in this projection before auth carries it out.
        self.evidence = EvidenceRules(DetectionWindows())
        self.erased_users: set[str] = set()  # accounts auth tombstoned: only theirs leave AUTH
        self.erasure_requests: set[str] = set()  # accounts whose erasure was requested through auth
        self._due: DurableConsumer | None = None
        self._security_records: Counter | None = None
        self.subject_versions = SubjectVersions()  # holes in the log (log_gaps.py)

    async def start(self, ctx: RunContext) -> None:
        self._ctx = ctx
        # login_failed and lockout among them: what the alert rules watch, at 0 before the first.
        self._security_records = ctx.metrics.counter(
            "parley_security_records",
            "Audit records written on SEC, per kind",
            ("kind",),
            zeroed=[(kind,) for kind in ("login_failed", "lockout", "change_not_made")],
            heartbeat=True,  # failed logins per minute on the console's Health page
        )
        self._issuer = TokenIssuer.load_or_create(self._signing_key_path, lifetime_s=self.settings.access_token_seconds)
        self._sealer = SecretSealer.load_or_create(ctx.settings.secrets_dir / AUTH_SEALING_KEY_FILE)
        self._audit_signer = AuditSigner.load_or_create(ctx.settings.secrets_dir / AUDIT_KEY_FILE)
        self._replay = await ctx.bus.replay(stream="AUTH", filter_subject="parley.auth.>", handler=self._apply)
        await self._replay.wait_caught_up()
        await self._load_audit_head()  # once the published audit keys are known
        await self._refuse_unexplained_gaps()
        await self._publish_audit_key()
        # An erased name is tombstoned before a registration can take it: a restored folder's
        # erasures are handed over this way.
        [due] = [c for c in CONSUMERS if c.service == "auth"]
        self._due = await ctx.bus.consume(due, StorageDue(self).handle)
        if not await self._due.wait_drained(DUE_CATCH_UP_S):
            log.warning("storage's due erasures not all marked before serving; marking goes on")
        await self._publish_first_signing_key()
        auth_pb2_grpc.add_AuthServiceServicer_to_server(self, ctx.server)
        ctx.add_service_name(auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name)
        self._key_maintenance = asyncio.create_task(self._maintain_signing_keys(), name="auth-signing-keys")

    async def stop(self) -> None:
        self._stopping = True
        self._signing_keys_changed.set()
        if self._key_maintenance is not None:
            await self._key_maintenance

    @property
    def ctx(self) -> RunContext:
        assert self._ctx is not None
        return self._ctx

    @property
    def signing_key_id(self) -> str:
        """The key this instance signs access tokens with now."""
        assert self._issuer is not None
        return self._issuer.key_id

    @property
    def _signing_key_path(self) -> Path:
        return self.ctx.settings.secrets_dir / "auth-signing-key.pem"

    async def _publish_first_signing_key(self) -> None:
        """A key no event knows yet, published. On a fresh installation on its own subject; on a
        log whose key in use this instance cannot sign with (a folder restored from a backup, or
        auth-signing-key.pem lost) as that key's successor, so the old key verifies the tokens it
        signed until they expire and is then retired, instead of being trusted for ever. A key
        from a rotation was published by it (and may have been adopted during the replay)."""
        assert self._issuer is not None
        issuer = self._issuer
        if issuer.key_id in self.signing_keys:
            return
        previous = key_in_use(self.signing_keys)
        published = SigningKeyPublished(
            key_id=issuer.key_id, algorithm=ALGORITHM, public_key=issuer.public_key, replaces_key_id=previous or ""
        )
        subject_key = previous or issuer.key_id
        state = self.signing_keys.get(subject_key)
        event = NewEvent(
            aggregate_type="signing_key", aggregate_id=subject_key, payload=published, actor="service:auth"
        )
        detail = f"{previous} -> {issuer.key_id}: the key in use is not in this data folder's secrets"
        version, seq = (state.version + 1, state.last_seq) if state else (1, 0)  # as read now
        recorded: contextlib.AbstractAsyncContextManager[object] = contextlib.nullcontext()
        if previous:
            recorded = self._recorded("signing_key_replaced", actor="service:auth", detail=detail)
        async with recorded:
            with contextlib.suppress(ConcurrencyConflict):  # another instance sharing the key published it
                await self.ctx.bus.append(
                    signing_key_subject(subject_key), event, aggregate_version=version, expected_last_subject_seq=seq
                )
        await self._settle()  # known to this instance's projection before it signs

    async def _publish_audit_key(self) -> None:
        """The public half of the key this instance signs audit records with, once: on a new
        folder, or when the folder lacks the key the earlier records were signed with (a restore
        without it): those keep verifying with their own published key."""
        assert self._audit_signer is not None
        signer = self._audit_signer
        if signer.key_id in self.audit_keys:
            return
        published = AuditKeyPublished(key_id=signer.key_id, algorithm="Ed25519", public_key=signer.public_key)
        event = NewEvent(
            aggregate_type="audit_key", aggregate_id=signer.key_id, payload=published, actor="service:auth"
        )
        with contextlib.suppress(FailedPrecondition):  # another instance sharing the key published it
            await self._append(audit_key_subject(signer.key_id), event, version=1, expected_seq=0)
        await self._settle()

    async def _refuse_unexplained_gaps(self) -> None:
        """Serve nothing rebuilt from a log an event was deleted from without an erasure: that
        deletion (a stolen storage credential's) would undo what the event recorded. Recorded on
        the audit chain (kind `event_log_gap`) and logged as a security event; the operator
        restores the event from the archive or a backup (`parley backup`) before auth starts."""
        gaps = self.subject_versions.unexplained()
        if not gaps:
            return
        detail = "; ".join(str(gap) for gap in gaps[:20])
        log.error(
            "security: events deleted from AUTH that no erasure explains; refusing to serve",
            extra={"security_event": "event_log_gap", "gaps": len(gaps), "detail": detail},
        )
        with contextlib.suppress(Unavailable):  # refused all the same; the log line above stands
            await self._security("event_log_gap", actor="service:auth", detail=detail)
        raise RefusedToStart(
            f"{len(gaps)} event(s) are missing from AUTH with no erasure to explain them ({detail}): rebuilding"
            " without them would undo what they recorded; restore them from the archive or a backup"
        )

    # -- projection -------------------------------------------------------------------------

    async def _apply(self, event: ReceivedEvent) -> None:
        payload = open_payload(event.envelope)
        user_id = str(getattr(payload, "user_id", ""))
        self.subject_versions.see(event.subject, event.envelope.aggregate_version, user_id)
        at = event.envelope.occurred_at.ToNanoseconds() / 1e9
        if isinstance(payload, UserRegistered):
            password_hash = self._unsealed_text(payload.sealed_password_hash, payload.password_hash, payload.user_id)
            self.accounts.add(Account(payload.user_id, payload.username, password_hash, payload.role))
            self.username_holders[username_key(payload.username)] = payload.user_id
            return
        if isinstance(payload, AuditKeyPublished | SigningKeyPublished):
            self._published_keys.append(payload)
        if isinstance(payload, AuditKeyPublished):
            self.audit_keys.add(payload.key_id)
            return
        if isinstance(payload, AccountErasureRequested):
            self.erasure_requests.add(payload.user_id)
            return
        if isinstance(payload, AccountErased):
            # Its events are being deleted from the stream; its name stays taken (see AccountErased).
            self.accounts.forget(payload.user_id)
            self.erasure_markers.add(event.envelope.event_id)
            self.erased_users.add(payload.user_id)
            self.subject_versions.erased(payload.user_id)
            return
        if isinstance(payload, USER_EVENTS):
            account = self.accounts.by_id(payload.user_id)
            if account is None:
                return
            # The version from the envelope, not counted: an erasure leaves gaps in the stream.
            account.user_seq = event.stream_seq
            account.user_version = max(account.user_version, event.envelope.aggregate_version)
            self._apply_user(account, payload)
            return
        if isinstance(payload, DEVICE_EVENTS):
            self._apply_device(payload, event.stream_seq)
            return
        if isinstance(payload, SigningKeyPublished | SigningKeyRetired):
            self._apply_signing_key(payload, event, at)
            return
        if isinstance(payload, InviteCreated):
            self.invites[payload.invite_sha256] = InviteState(
                payload.role, payload.expires_at_unix, last_seq=event.stream_seq
            )
            return
        if isinstance(payload, InviteRedeemed):
            if (invite := self.invites.get(payload.invite_sha256)) is not None:
                invite.redeemed, invite.last_seq = True, event.stream_seq
            return
        if isinstance(payload, LoginFailureCounted):
            self.lockouts.record_failure(payload.account_key, budget_key(payload.source), at=at)
            return
        if isinstance(payload, LoginFailuresCleared):
            self.lockouts.record_success(payload.account_key, budget_key(payload.source) if payload.source else "")
            return
        if isinstance(payload, SourceSlowed):
            self.lockouts.slow(budget_key(payload.source), payload.until_unix)
            return
        if isinstance(payload, SourceSlowdownLifted):
            self.lockouts.lift(budget_key(payload.source), payload.lifted_until)
            return
        if isinstance(payload, MfaRequirementSet):
            if payload.required:
                self.mfa_required_roles.add(payload.role)
            else:
                self.mfa_required_roles.discard(payload.role)
            return
        if isinstance(payload, SessionStarted):
            earlier = self.sessions.of_user(payload.user_id)
            self.sessions.sessions[payload.session_id] = Session(
                session_id=payload.session_id,
                user_id=payload.user_id,
                started_at=at,
                source=payload.source,
                first_from_source=bool(earlier) and all(s.source != payload.source for s in earlier),
                last_source=payload.source,
                mfa=payload.mfa,
                current=self._unsealed(
                    payload.sealed_refresh_token_sha256, payload.refresh_token_sha256, REFRESH_TOKEN, payload.session_id
                ),
                last_refreshed_at=at,
                last_seq=event.stream_seq,
                version=1,
            )
            return
        if isinstance(payload, RefreshTokenRotated | SessionRevoked | SessionStepUpRequired):
            session = self.sessions.get(payload.session_id)
            if session is None:
                return
            session.last_seq, session.version = event.stream_seq, session.version + 1
            if isinstance(payload, RefreshTokenRotated):
                self._note_source(session, payload.source, at)
                sealed, plain, owner = payload.sealed_previous_sha256, payload.previous_sha256, payload.session_id
                previous = self._unsealed(sealed, plain, REFRESH_TOKEN, owner)
                sealed, plain = payload.sealed_refresh_token_sha256, payload.refresh_token_sha256
                session.rotate(previous, self._unsealed(sealed, plain, REFRESH_TOKEN, owner), at)
            elif isinstance(payload, SessionRevoked):
                session.revoked_reason = payload.reason or "revoked"
            else:
                session.step_up_required = True

    def _note_source(self, session: Session, source: str, at: float) -> None:
        """A refresh from another address than the session's last use, soon after it: what the
        two-sources rule counts, and so what its response must find (anomaly_evidence.py)."""
        if not source:
            return
        window = self.evidence.windows.two_sources_window_s
        if session.last_source and source != session.last_source and at - session.last_refreshed_at <= window:
            session.switched_source_at = at
        session.last_source = source

    def _apply_signing_key(
        self, payload: SigningKeyPublished | SigningKeyRetired, event: ReceivedEvent, at: float
    ) -> None:
        if isinstance(payload, SigningKeyPublished):
            self.signing_keys.setdefault(payload.key_id, SigningKeyState(at, replaces=payload.replaces_key_id))
        elif (retired := self.signing_keys.get(payload.key_id)) is not None:
            retired.retired = True
        # A successor is published on the subject of the key it replaces.
        if (subject_key := self.signing_keys.get(event.envelope.aggregate_id)) is not None:
            subject_key.last_seq, subject_key.version = event.stream_seq, subject_key.version + 1
        if isinstance(payload, SigningKeyPublished):
            self._adopt_successor(payload)
        self._signing_keys_changed.set()

    def _apply_device(self, payload: Message, stream_seq: int) -> None:
        assert isinstance(payload, DEVICE_EVENTS)
        if isinstance(payload, DeviceRemoved):
            self.keys.devices.pop((payload.user_id, payload.device_id), None)
            self.keys.removed.add((payload.user_id, payload.device_id))
            return
        if isinstance(payload, DeviceKeysPublished):
            device = keys.DeviceRecord(
                user_id=payload.user_id,
                device_id=payload.device_id,
                curve25519=payload.curve25519,
                ed25519=payload.ed25519,
                signature=payload.signature,
                display_name=payload.display_name,
            )
            self.keys.devices[(payload.user_id, payload.device_id)] = device
        else:
            found = self.keys.get(payload.user_id, payload.device_id)
            if found is None:
                return
            device = found
            if isinstance(payload, OneTimeKeysUploaded):
                for k in payload.keys:
                    device.unclaimed[k.key_id] = keys.StoredKey(k.key_id, k.key, k.signature)
                    device.seen_key_ids.add(k.key_id)
                if payload.HasField("fallback_key"):
                    fb = payload.fallback_key
                    device.fallback = keys.StoredKey(fb.key_id, fb.key, fb.signature)
                    device.seen_key_ids.add(fb.key_id)
            else:
                device.unclaimed.pop(payload.key_id, None)
        device.last_seq, device.version = stream_seq, device.version + 1

    def _apply_user(self, account: Account, payload: Message) -> None:
        state = self.mfa.setdefault(account.user_id, mfa.MfaState())
        if isinstance(payload, RoleAssigned):
            account.role = payload.role
        elif isinstance(payload, AccountDisabled):
            account.disabled = True
        elif isinstance(payload, AccountEnabled):
            account.disabled = False
        elif isinstance(payload, PasswordChanged):
            sealed, plain = payload.sealed_password_hash, payload.password_hash
            account.password_hash = self._unsealed_text(sealed, plain, account.user_id)
        elif isinstance(payload, TotpEnrolmentStarted):
            state.pending_secret = payload.sealed_secret
        elif isinstance(payload, TotpEnrolled):
            state.secret, state.pending_secret = state.pending_secret, b""
            state.recovery = self._recovery_set(payload, account.user_id)
        elif isinstance(payload, TotpCodeAccepted):
            state.last_step = max(state.last_step, payload.time_step)
        elif isinstance(payload, RecoveryCodeUsed):
            used = payload.recovery_code_sha256
            if payload.sealed_recovery_code_sha256:
                used = self._unsealed(payload.sealed_recovery_code_sha256, b"", RECOVERY_CODE, account.user_id)
            state.recovery.discard(used)
        elif isinstance(payload, TotpReset):
            # Single use is per secret: the next enrolment's secret starts its own count.
            self.mfa[account.user_id] = mfa.MfaState()
        elif isinstance(payload, RecoveryCodesRegenerated):
            state.recovery = self._recovery_set(payload, account.user_id)

    # -- sealed secrets (parley_auth.sealing): every service reads AUTH, only auth opens them ----

    def _seal(self, value: bytes, field: str, owner: str) -> bytes:
        assert self._sealer is not None
        return self._sealer.seal_field(value, field=field, owner=owner)

    def _unsealed(self, sealed: bytes, plain: bytes, field: str, owner: str) -> bytes:
        """The value from its sealed field; from the plaintext one in an event written before
        auth sealed it. One that does not open (another key: secrets/auth-mfa-key.bin is not
        this event log's) is empty, which matches nothing: that account cannot log in."""
        if not sealed:
            return plain
        assert self._sealer is not None
        try:
            return self._sealer.open_field(sealed, field=field, owner=owner)
        except SealedFieldUnreadable as exc:
            log.error("%s: restore the data folder's %s from the key backup", exc, AUTH_SEALING_KEY_FILE)
            return b""

    def _unsealed_text(self, sealed: bytes, plain: str, user_id: str) -> str:
        return self._unsealed(sealed, plain.encode(), PASSWORD_HASH, user_id).decode()

    def _recovery_set(self, payload: TotpEnrolled | RecoveryCodesRegenerated, user_id: str) -> set[bytes]:
        if payload.sealed_recovery_codes:
            return digests(self._unsealed(payload.sealed_recovery_codes, b"", RECOVERY_CODES, user_id))
        return set(payload.recovery_code_sha256)

    def _sealed_recovery_codes(self, codes: list[str], user_id: str) -> bytes:
        return self._seal(b"".join(mfa.recovery_digest(c) for c in codes), RECOVERY_CODES, user_id)

    # -- writing ----------------------------------------------------------------------------

    async def _append(self, subject: str, event: NewEvent, *, version: int, expected_seq: int | None) -> None:
        """Append and wait until our own projection has it (read-your-writes)."""
        assert self._replay is not None
        try:
            appended = await self.ctx.bus.append(
                subject, event, aggregate_version=version, expected_last_subject_seq=expected_seq
            )
        except ConcurrencyConflict:
            raise FailedPrecondition("the account changed at the same time; try again") from None
        except nats.errors.Error as exc:
            log.exception("append refused", extra={"subject": subject})
            raise Unavailable(f"the event log refused the change ({exc}); nothing was changed, try again") from exc
        await self._replay.wait_for_seq(appended.stream_seq)

    async def append_and_apply(self, subject: str, event: NewEvent) -> None:
        """Append after whatever the subject holds (for a marker on an aggregate this projection
        keeps no version of), then wait until our own projection has it."""
        assert self._replay is not None
        await self._replay.wait_for_seq(await self.ctx.bus.append_after_last(subject, event))

    async def _user_event(
        self, account: Account, payload: Message, actor: str, *, read: tuple[int, int] | None = None
    ) -> None:
        """Appended at the account's version and sequence as they were when the change was
        decided (`read`, from `_read`: taken before the audit record is written, which yields to
        other calls), so a change that raced it refuses this one; by default as they are now."""
        version, seq = read or _read(account)
        event = NewEvent(aggregate_type="user", aggregate_id=account.user_id, payload=payload, actor=actor)
        await self._append(user_subject(account.user_id), event, version=version + 1, expected_seq=seq)

    async def _session_event(self, session: Session, payload: Message, actor: str) -> None:
        event = NewEvent(aggregate_type="session", aggregate_id=session.session_id, payload=payload, actor=actor)
        await self._append(
            session_subject(session.session_id), event, version=session.version + 1, expected_seq=session.last_seq
        )

    def trusted_audit_keys(self) -> TrustedKeys:
        """The keys an audit record auth links after must be signed with: the published ones
        (a restored folder's earlier audit key among them) and this instance's own."""
        assert self._audit_signer is not None
        own = AuditKeyPublished(key_id=self._audit_signer.key_id, public_key=self._audit_signer.public_key)
        return trusted_keys([*self._published_keys, own])

    async def _load_audit_head(self) -> None:
        """The chain continues from the newest audit record on the SEC stream signed with a key
        auth trusts, which need not be the stream's newest message: another writer's message,
        or a record forged by someone who may publish on SEC, is no link in the chain."""
        head = await chain_head(self.ctx.bus.js, self.trusted_audit_keys())
        self._saw(head)
        self._sec_last_seq = head.stream_last_seq
        self._audit = AuditChain()
        if head.record is not None:
            self._audit.advance(head.record)

    async def _follow_audit_head(self) -> None:
        """After a conflict: the messages since the last one this instance knew, newest first and
        at most AUDIT_HEAD_SCAN_LIMIT of them, for another instance's newer record. Past the limit
        the chain goes on from this instance's own head, and the skipped stretch is logged as a
        security event (a flood on SEC; should another instance's record be in it, the verifier
        names the fork)."""
        last_known = self._sec_last_seq
        after = max(last_known, (await self.ctx.bus.js.stream_info(SEC_STREAM)).state.last_seq - AUDIT_HEAD_SCAN_LIMIT)
        head = await chain_head(self.ctx.bus.js, self.trusted_audit_keys(), after_seq=after)
        self._saw(head)
        if head.record is not None and head.record.chain_index > self._audit.last_index:
            self._audit.advance(head.record)
        elif after > last_known:
            log.error(
                "security: SEC grew by more messages than auth reads for its chain head; linking after its own",
                extra={"security_event": "audit_head_scan_bounded", "unread": after - last_known},
            )
        self._sec_last_seq = head.stream_last_seq

    def _saw(self, head: ChainHead) -> None:
        self.sec_messages_read += head.read
        if head.forged:
            log.error(
                "security: audit records on SEC that no trusted key signed (forged); not linked to",
                extra={"security_event": "audit_record_forged", "count": head.forged},
            )

    async def _security(self, kind: str, *, actor: str, user_id: str = "", **fields: Any) -> int:
        """An audit record on the SEC stream: for the SIEM, and a link in the signed hash chain.
        Returns its chain number.

        Appends are ordered after the stream's last message, so two auth instances cannot fork
        the chain: the loser reloads the head and links again. A record is written before the
        change it reports (see _recorded), so one that cannot be written fails the call
        (UNAVAILABLE) before the change is made: nothing happens unrecorded.
        """
        assert self._audit_signer is not None
        fields.setdefault("source", REQUEST_SOURCE.get())
        async with self._audit_lock:
            for _ in range(AUDIT_APPEND_ATTEMPTS):
                record = SecurityEventRecorded(
                    kind=kind,
                    user_id=user_id,
                    actor=actor,
                    key_id=self._audit_signer.key_id,
                    occurred_at_unix_ns=time.time_ns(),
                    **fields,
                )
                self._audit.link(record)
                record.signature = self._audit_signer.sign(record.record_hash)
                event = NewEvent(
                    aggregate_type="security", aggregate_id=user_id or "unknown", payload=record, actor=actor
                )
                try:
                    appended = await self.ctx.bus.append(
                        security_subject(kind, user_id),
                        event,
                        aggregate_version=record.chain_index,
                        expected_last_subject_seq=None,
                        expected_last_stream_seq=self._sec_last_seq,
                    )
                except ConcurrencyConflict:
                    await self._follow_audit_head()
                    continue
                except Exception as exc:
                    log.exception("audit record not written", extra={"kind": kind, "user_id": user_id})
                    # Which record it was stays in the log: a login's would tell whether the password was right.
                    raise Unavailable(
                        f"the audit trail refused the record of this call ({exc}); the change it records was not"
                        " made, try again (the operator checks the SEC stream)"
                    ) from exc
                self._audit.advance(record)
                self._sec_last_seq = appended.stream_seq
                if self._security_records is not None:
                    self._security_records.labels(kind).inc()
                return int(record.chain_index)
            log.error("audit record not written: the SEC stream kept moving", extra={"kind": kind})
            raise Unavailable("the audit trail is busy; the change this call records was not made, try again")

    def _unknown_name(self, typed: str) -> str:
        assert self._sealer is not None
        return self._sealer.unknown_name(typed)

    async def security_event(self, kind: str, *, actor: str, user_id: str = "", **fields: Any) -> int:
        """An audit record of something auth refused to do (it changes nothing else)."""
        return await self._security(kind, actor=actor, user_id=user_id, **fields)

    def recorded(
        self, kind: str, *, actor: str, user_id: str = "", **fields: Any
    ) -> contextlib.AbstractAsyncContextManager[int]:
        """`_recorded`, for auth's reactions outside a call (storage's due facts)."""
        return self._recorded(kind, actor=actor, user_id=user_id, **fields)

    @contextlib.asynccontextmanager
    async def _recorded(self, kind: str, *, actor: str, user_id: str = "", **fields: Any) -> AsyncIterator[int]:
        """Around a change: its audit record is written first, so a change whose record cannot be
        written is not made. If the change then fails, a `change_not_made` record names the
        record it contradicts (as long as the trail can still be written): the trail may hold an
        attempt that did not take effect, never miss a change that did."""
        index = await self._security(kind, actor=actor, user_id=user_id, **fields)
        try:
            yield index
        except Exception as exc:
            why = (str(exc) or type(exc).__name__)[:MAX_NOT_MADE_DETAIL]
            with contextlib.suppress(Unavailable):
                await self._security(
                    "change_not_made", actor=actor, user_id=user_id, detail=f"record #{index} ({kind}): {why}"
                )
            raise

    async def _revoke(self, session: Session, reason: str, actor: str) -> None:
        if session.revoked:
            return
        detail = f"{session.session_id}: {reason}"
        async with self._recorded("session_revoked", actor=actor, user_id=session.user_id, detail=detail):
            await self._session_event(
                session, SessionRevoked(session_id=session.session_id, user_id=session.user_id, reason=reason), actor
            )

    async def revoke_for_anomaly(self, session: Session, reason: str) -> None:
        """Storage's detector asked for it (storage_due.py); the reason names the anomaly."""
        await self._revoke(session, reason, "service:storage")

    async def require_step_up(self, session: Session, reason: str, anomaly_event_id: str) -> None:
        """Storage's detector asked for it (storage_due.py): every service limits the session's
        tokens as a login owing its second factor (parley_core.tokens), until the user logs in
        again. Once per session; a revoked session is left as it is."""
        if session.revoked or session.step_up_required:
            return
        detail = f"{session.session_id}: {reason}"[:MAX_NOT_MADE_DETAIL]
        required = SessionStepUpRequired(
            session_id=session.session_id, user_id=session.user_id, reason=reason, anomaly_event_id=anomaly_event_id
        )
        async with self._recorded("step_up_required", actor="service:storage", user_id=session.user_id, detail=detail):
            await self._session_event(session, required, "service:storage")

    async def slow_source(self, slowed: SourceSlowed, event_id: str) -> None:
        """Storage's detector asked for it (storage_due.py): logins and step-up checks from the
        address are refused until `until_unix`, recorded first on the audit trail."""
        if self.lockouts.slow_down_answered(budget_key(slowed.source), slowed.until_unix):
            return  # carried out already (a repeated fact, or a redelivery), or lifted since
        key = username_key(budget_key(slowed.source))
        event = NewEvent(
            aggregate_type="slowed", aggregate_id=key, payload=slowed, actor="service:auth", event_id=event_id
        )
        detail = f"until {utc_text(slowed.until_unix)}: {slowed.reason}"[:MAX_NOT_MADE_DETAIL]
        async with self._recorded(
            "source_slowed", actor="service:storage", user_id="", source=slowed.source, detail=detail
        ):
            await self.append_and_apply(slowed_source_subject(key), event)

    # -- who is calling -----------------------------------------------------------------------

    def _source(self, context: Context) -> str:
        """The client's address: the gateway's word for it (only the gateway's certificate is
        believed), else the caller's own peer address (operator tooling)."""
        if "gateway" in peer_names(context):
            for key, value in context.invocation_metadata() or ():
                if key == SOURCE_METADATA:
                    return (value.decode() if isinstance(value, bytes) else value)[:MAX_SOURCE_LENGTH]
        return client_address(context.peer())

    def _caller_or_platform(self, context: Context) -> Caller | None:
        """None when the platform identity calls without a user token (operator tooling)."""
        REQUEST_SOURCE.set(self._source(context))
        if bearer_token(context) is None and PLATFORM_USER in peer_names(context):
            return None
        return self.ctx.tokens.caller(context)

    def _caller(self, context: Context) -> Caller:
        REQUEST_SOURCE.set(self._source(context))
        return self.ctx.tokens.caller(context)

    def _administered(self, context: Context, user_id: str, reason: str, action: AccountAction) -> tuple[Account, str]:
        """The account an administrator (or the platform identity) acts on, and the actor to
        record; refuses what no admin may do: what rbac's one rule refuses, or act on oneself."""
        caller = self._caller_or_platform(context)
        account = self._account(user_id)
        if len(reason) > MAX_REASON_LENGTH:
            raise InvalidArgument(f"reason must be at most {MAX_REASON_LENGTH} characters")
        if caller is not None and caller.user_id == account.user_id:
            raise FailedPrecondition(f"you cannot {action} your own account; ask another administrator")
        check_account_action(caller, action, account)
        return account, f"user:{caller.user_id}" if caller else PLATFORM_USER

    def _account(self, user_id: str) -> Account:
        account = self.accounts.by_id(_id(user_id, "user_id"))
        if account is None:
            raise NotFound("no such user")
        return account

    # -- accounts -----------------------------------------------------------------------------

    async def _claimable(
        self, username_raw: str, password: str, *, self_service: bool, by_platform: bool = False
    ) -> tuple[str, str]:
        """The normalized name and the password's hash, if the name can be had.

        The hash is computed before the name is looked up, so a taken name costs the same time
        as a free one; every unavailable name gets one answer. Self-registration attempts that
        get this far (a valid name and password, so a real probe) spend the source's budget.
        """
        username = normalize_username(username_raw)
        check_name_claimable(username, by_platform=by_platform)
        check_password_policy(password, username)
        if self_service and (wait := self.registrations.take(budget_key(REQUEST_SOURCE.get()))):
            raise ResourceExhausted(f"too many registrations from this address; try again in {int(wait) + 1} s")
        password_hash = await hash_password(password)
        if self.accounts.find(username) is not None or (self_service and is_reserved(username)):
            raise AlreadyExists(USERNAME_UNAVAILABLE)
        return username, password_hash

    async def _create(self, username: str, password_hash: str, role: str, actor: str, user_id: str) -> Account:
        assert self._replay is not None
        sealed = self._seal(password_hash.encode(), PASSWORD_HASH, user_id)
        event = NewEvent(
            aggregate_type="user",
            aggregate_id=user_id,
            payload=UserRegistered(user_id=user_id, username=username, sealed_password_hash=sealed, role=role),
            actor=actor or f"user:{user_id}",
        )
        try:
            appended = await self.ctx.bus.append(
                username_subject(username_key(username)), event, aggregate_version=1, expected_last_subject_seq=0
            )
        except ConcurrencyConflict:
            raise AlreadyExists(USERNAME_UNAVAILABLE) from None
        await self._replay.wait_for_seq(appended.stream_seq)
        account = self.accounts.by_id(user_id)
        assert account is not None
        return account

    async def Register(self, request: auth_pb2.RegisterRequest, context: Context) -> auth_pb2.RegisterResponse:
        REQUEST_SOURCE.set(self._source(context))
        mode = self.ctx.settings.registration
        if mode == "admin":
            raise PermissionDenied(
                "self-registration is closed on this server; an administrator creates accounts "
                "(`parley admin create-user`)"
            )
        user_id = uuid.uuid4().hex
        invite: tuple[bytes, InviteState] | None = None
        if mode == "open":
            username, password_hash = await self._claimable(request.username, request.password, self_service=True)
            role = DEFAULT_ROLE
        else:
            invite = self._valid_invite(request)
            role = invite[1].role
            username, password_hash = await self._claimable(request.username, request.password, self_service=True)
        async with self._recorded(
            "account_registered",
            actor=f"user:{user_id}",
            user_id=user_id,
            username=username,
            detail=f"{mode} registration as {role}",
        ):
            if invite is not None:
                await self._redeem(*invite, user_id=user_id)
            account = await self._create(username, password_hash, role, "", user_id)
        return auth_pb2.RegisterResponse(user_id=account.user_id, username=account.username)

    def _valid_invite(self, request: auth_pb2.RegisterRequest) -> tuple[bytes, InviteState]:
        """The invitation is redeemed (atomically, once) before the account is created; what
        could make the creation fail (name unavailable, weak password) is checked first, so a
        valid invitation is not burnt by a typo."""
        code = request.invite_code.strip()
        if not code or len(code) > 128:
            raise PermissionDenied("registration is by invitation: give the invite code you received")
        invite_hash = hashlib.sha256(code.encode()).digest()
        invite = self.invites.get(invite_hash)
        if invite is None or invite.redeemed or invite.expires_at_unix < time.time():
            raise PermissionDenied("this invitation is unknown, expired or already used; ask for a new one")
        # Read before hashing yields to other calls: of racing redemptions only one append lands.
        return invite_hash, InviteState(invite.role, invite.expires_at_unix, last_seq=invite.last_seq)

    async def _redeem(self, invite_hash: bytes, invite: InviteState, *, user_id: str) -> None:
        redeemed = NewEvent(
            aggregate_type="invite",
            aggregate_id=invite_hash.hex(),
            payload=InviteRedeemed(invite_sha256=invite_hash, user_id=user_id),
            actor=f"user:{user_id}",
        )
        try:
            await self._append(invite_subject(invite_hash), redeemed, version=2, expected_seq=invite.last_seq)
        except FailedPrecondition:
            raise PermissionDenied("this invitation was used at the same moment; ask for a new one") from None

    async def CreateInvite(self, request: auth_pb2.CreateInviteRequest, context: Context) -> auth_pb2.Invite:
        caller = self._caller_or_platform(context)
        role = validate_role(request.role or DEFAULT_ROLE)
        if (
            caller is not None
            and role != DEFAULT_ROLE
            and not may_assign(caller.role, target_current_role=DEFAULT_ROLE, new_role=role)
        ):
            raise PermissionDenied(f"role {caller.role!r} may not invite a {role!r}")
        hours = request.valid_hours or INVITE_DEFAULT_HOURS
        if not 1 <= hours <= INVITE_MAX_HOURS:
            raise InvalidArgument(f"valid_hours must be 1-{INVITE_MAX_HOURS}")
        code = secrets.token_urlsafe(24)
        invite_hash = hashlib.sha256(code.encode()).digest()
        expires = int(time.time()) + hours * 3600
        actor = f"user:{caller.user_id}" if caller else PLATFORM_USER
        event = NewEvent(
            aggregate_type="invite",
            aggregate_id=invite_hash.hex(),
            payload=InviteCreated(invite_sha256=invite_hash, role=role, created_by=actor, expires_at_unix=expires),
            actor=actor,
        )
        async with self._recorded("invite_created", actor=actor, detail=f"role {role}, valid {hours} h"):
            await self._append(invite_subject(invite_hash), event, version=1, expected_seq=0)
        return auth_pb2.Invite(invite_code=code, role=role, expires_at_unix=expires)

    # -- signing keys ---------------------------------------------------------------------------

    def _successor_path(self, key_id: str) -> Path:
        return self.ctx.settings.secrets_dir / f"auth-signing-key.{key_id}.pem"

    async def _rotate_signing_key(self, actor: str) -> TokenIssuer:
        """A successor for the key in use, published on that key's subject at its last sequence:
        of auth instances rotating at the same moment (their schedule is the same) exactly one
        succeeds; the others adopt its key from the shared secrets folder instead of adding one."""
        assert self._issuer is not None
        previous = self._issuer.key_id
        state = self.signing_keys.get(previous)
        if state is None:
            raise FailedPrecondition("the signing key in use is not published yet; try again")
        issuer = TokenIssuer.generate(lifetime_s=self.settings.access_token_seconds)
        # Saved before the claim, so an instance that sees the publication can read the key.
        staged = self._successor_path(issuer.key_id)
        issuer.save(staged)
        assert self._sealer is not None
        published = SigningKeyPublished(
            key_id=issuer.key_id,
            algorithm=ALGORITHM,
            public_key=issuer.public_key,
            replaces_key_id=previous,
            # For the auth instances on other hosts, which do not share this secrets folder.
            sealed_private_key=self._sealer.seal_field(
                issuer.private_der(), field=SEALED_SIGNING_KEY_FIELD, owner=issuer.key_id
            ),
        )
        event = NewEvent(aggregate_type="signing_key", aggregate_id=previous, payload=published, actor="service:auth")
        version, seq = state.version + 1, state.last_seq  # as read now: of racing rotations, one lands
        try:
            async with self._recorded("signing_key_rotated", actor=actor, detail=f"{previous} -> {issuer.key_id}"):
                await self.ctx.bus.append(
                    signing_key_subject(previous), event, aggregate_version=version, expected_last_subject_seq=seq
                )
        except (ConcurrencyConflict, Unavailable) as exc:
            staged.unlink(missing_ok=True)
            if isinstance(exc, Unavailable):
                raise
            await self._settle()  # the winner's successor, adopted as it is applied
            return self._issuer
        staged.replace(self._signing_key_path)
        # This instance's verifier must know the key before a token signed with it is handed out.
        await self._settle()
        self._issuer = issuer
        return issuer

    def _adopt_successor(self, published: SigningKeyPublished) -> None:
        """The key we sign with was replaced (by this instance, another one sharing the secrets
        folder, or one on another host): sign with the successor, so the replaced key can be
        retired on time."""
        if self._issuer is None or published.replaces_key_id != self._issuer.key_id:
            return
        for path in (self._successor_path(published.key_id), self._signing_key_path):
            with contextlib.suppress(OSError, ValueError):
                issuer = TokenIssuer.load(path, lifetime_s=self.settings.access_token_seconds)
                if issuer.key_id == published.key_id:
                    self._issuer = issuer
                    return
        if published.sealed_private_key and self._sealer is not None:
            try:
                der = self._sealer.open_field(
                    published.sealed_private_key, field=SEALED_SIGNING_KEY_FIELD, owner=published.key_id
                )
                issuer = TokenIssuer.from_der(der, lifetime_s=self.settings.access_token_seconds)
            except (SealedFieldUnreadable, ValueError):
                log.error("signing key %s is sealed under another sealing key; not adopted", published.key_id)
                return
            if issuer.key_id != published.key_id:
                log.error("signing key %s's sealed private key is another key's; not adopted", published.key_id)
                return
            issuer.save(self._signing_key_path)  # a restart signs with it too
            self._issuer = issuer

    async def _retire_signing_key(self, key_id: str, actor: str) -> None:
        state = self.signing_keys[key_id]
        if state.retired:
            return
        event = NewEvent(
            aggregate_type="signing_key", aggregate_id=key_id, payload=SigningKeyRetired(key_id=key_id), actor=actor
        )
        async with self._recorded("signing_key_retired", actor=actor, detail=key_id):
            await self._append(signing_key_subject(key_id), event, version=2, expected_seq=None)

    async def _maintain_signing_keys(self) -> None:
        """Rotates the signing key on schedule (PARLEY_AUTH_SIGNING_KEY_ROTATION_SECONDS) and
        retires each replaced key once every token it signed has expired. Times come from the
        AUTH stream, so a restart keeps the schedule; wakes when the keys change or at the next
        due time."""
        while not self._stopping:
            self._signing_keys_changed.clear()
            failed = False
            try:
                await self._signing_key_chores()
            except Exception:  # retried shortly; tokens keep being issued and verified meanwhile
                log.exception("signing key rotation or retirement failed")
                failed = True
            assert self._issuer is not None
            due = self.key_schedule.next_due(self.signing_keys, current_key_id=self._issuer.key_id)
            delay = (
                KEY_MAINTENANCE_MAX_WAIT_S
                if due is None
                else min(max(due - time.time(), 0.0), KEY_MAINTENANCE_MAX_WAIT_S)
            )
            if failed:
                delay = max(delay, KEY_MAINTENANCE_RETRY_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._signing_keys_changed.wait(), delay)

    async def _signing_key_chores(self) -> None:
        assert self._issuer is not None
        now = time.time()
        for key_id in self.key_schedule.retirable(self.signing_keys, current_key_id=self._issuer.key_id, now=now):
            await self._retire_signing_key(key_id, "service:auth")
        current = self.signing_keys.get(self._issuer.key_id)
        if current is None:
            return
        due = (at := self.key_schedule.rotate_at(current)) is not None and at <= now
        # Replaced, yet still ours: the successor's private key was lost (a crash mid-rotation).
        orphaned = replaced_at(self.signing_keys, self._issuer.key_id) is not None
        if due or orphaned:
            await self._rotate_signing_key("service:auth")

    async def RotateSigningKey(
        self, request: auth_pb2.RotateSigningKeyRequest, context: Context
    ) -> auth_pb2.SigningKeyInfo:
        caller = self._caller_or_platform(context)
        issuer = await self._rotate_signing_key(f"user:{caller.user_id}" if caller else PLATFORM_USER)
        return auth_pb2.SigningKeyInfo(key_id=issuer.key_id, current=True)

    async def RetireSigningKey(
        self, request: auth_pb2.RetireSigningKeyRequest, context: Context
    ) -> auth_pb2.SigningKeyInfo:
        """Retires a key before its tokens expired (a leaked key): they are refused at once."""
        assert self._issuer is not None
        caller = self._caller_or_platform(context)
        key_id = _id(request.key_id, "key_id")
        if key_id not in self.signing_keys:
            raise NotFound("no such signing key")
        if key_id == self._issuer.key_id:
            raise FailedPrecondition("this is the key in use; rotate to a new key first")
        await self._retire_signing_key(key_id, f"user:{caller.user_id}" if caller else PLATFORM_USER)
        return auth_pb2.SigningKeyInfo(key_id=key_id, current=False, retired=True)

    async def CreateUser(self, request: auth_pb2.CreateUserRequest, context: Context) -> auth_pb2.Account:
        caller = self._caller_or_platform(context)
        role = validate_role(request.role or DEFAULT_ROLE)
        if (
            caller is not None
            and role != DEFAULT_ROLE
            and not may_assign(caller.role, target_current_role=DEFAULT_ROLE, new_role=role)
        ):
            raise PermissionDenied(f"role {caller.role!r} may not create a user with role {role!r}")
        actor = f"user:{caller.user_id}" if caller else PLATFORM_USER
        username, password_hash = await self._claimable(
            request.username, request.password, self_service=False, by_platform=caller is None
        )
        user_id = uuid.uuid4().hex
        async with self._recorded(
            "role_assigned", actor=actor, user_id=user_id, username=username, detail=f"created as {role}"
        ):
            account = await self._create(username, password_hash, role, actor, user_id)
        return account_proto(account)

    async def GetAccount(self, request: auth_pb2.GetAccountRequest, context: Context) -> auth_pb2.Account:
        account = self.accounts.find(normalize_username(request.username))
        if account is None:
            raise NotFound("no such user")
        return account_proto(account, self.lockouts)

    async def LookupUsers(self, request: auth_pb2.LookupUsersRequest, context: Context) -> auth_pb2.LookupUsersResponse:
        if not 1 <= len(request.user_ids) <= MAX_USERS_PER_LOOKUP:
            raise InvalidArgument(f"give 1 to {MAX_USERS_PER_LOOKUP} user ids")
        found = (self.accounts.by_id(_id(user_id, "user_id")) for user_id in dict.fromkeys(request.user_ids))
        return auth_pb2.LookupUsersResponse(
            users=[auth_pb2.UserName(user_id=a.user_id, username=a.username) for a in found if a is not None]
        )

    async def AssignRole(self, request: auth_pb2.AssignRoleRequest, context: Context) -> auth_pb2.Account:
        caller = self._caller_or_platform(context)
        account = self._account(request.user_id)
        role = validate_role(request.role)
        check_account_action(caller, AccountAction.ASSIGN_ROLE, account)
        if caller is not None and not may_assign(caller.role, target_current_role=account.role, new_role=role):
            raise PermissionDenied(f"role {caller.role!r} may not change {account.role!r} to {role!r}")
        if account.role == role:
            return account_proto(account)
        actor = f"user:{caller.user_id}" if caller else PLATFORM_USER
        previous, read = account.role, _read(account)
        detail = f"{previous} -> {role}"
        async with self._recorded(
            "role_assigned", actor=actor, user_id=account.user_id, username=account.username, detail=detail
        ):
            assigned = RoleAssigned(user_id=account.user_id, role=role, previous_role=previous)
            await self._user_event(account, assigned, actor, read=read)
        return account_proto(account)

    async def SetAccountDisabled(
        self, request: auth_pb2.SetAccountDisabledRequest, context: Context
    ) -> auth_pb2.Account:
        account, actor = self._administered(context, request.user_id, request.reason, AccountAction.DISABLE)
        if account.disabled == request.disabled:
            return account_proto(account)
        payload: Message = (
            AccountDisabled(user_id=account.user_id, reason=request.reason)
            if request.disabled
            else AccountEnabled(user_id=account.user_id)
        )
        kind, read = "account_disabled" if request.disabled else "account_enabled", _read(account)
        async with self._recorded(
            kind, actor=actor, user_id=account.user_id, username=account.username, detail=request.reason
        ):
            await self._user_event(account, payload, actor, read=read)
        return account_proto(account)

    # -- login and sessions -------------------------------------------------------------------

    async def Login(self, request: auth_pb2.LoginRequest, context: Context) -> auth_pb2.LoginResponse:
        REQUEST_SOURCE.set(self._source(context))
        if not request.username or not request.password:
            raise InvalidArgument("username and password are required")
        if len(request.username) > 256 or len(request.password) > MAX_PASSWORD_LENGTH:
            raise InvalidArgument("username or password is too long")
        source = self._source(context)
        try:
            username = normalize_username(request.username)
        except InvalidArgument:
            username = ""
        account = self.accounts.find(username) if username else None
        key = username if account is not None else self._unknown_name(username or request.username.casefold())
        self._refuse_while_locked(key, source)
        ok = await verify_password(account.password_hash if account else None, request.password)
        if not ok or account is None:
            await self._failed("login_failed", key=key, source=source, user_id=account.user_id if account else "")
            raise Unauthenticated(LOGIN_FAILED)
        if account.disabled:
            raise Unauthenticated("this account is disabled; ask an administrator")
        used_mfa = await self._second_factor(account, request, key, source)
        actor = f"user:{account.user_id}"
        session_id = uuid.uuid4().hex
        refresh = new_refresh_token(session_id)
        new_source = not any(s.source == source for s in self.sessions.of_user(account.user_id))
        read = _read(account)
        async with self._recorded(
            "login_succeeded", actor=actor, user_id=account.user_id, username=account.username, source=source
        ):
            if new_source:
                await self._security(
                    "new_session_source", actor=actor, user_id=account.user_id, username=account.username, source=source
                )
            await self._succeeded(key, source)
            if needs_rehash(account.password_hash):
                # The hashing parameters were raised since this password was set.
                await self._set_password(account, await hash_password(request.password), actor, read)
            started = SessionStarted(
                session_id=session_id,
                user_id=account.user_id,
                sealed_refresh_token_sha256=self._seal(digest(refresh), REFRESH_TOKEN, session_id),
                source=source,
                mfa=used_mfa,
            )
            event = NewEvent(aggregate_type="session", aggregate_id=session_id, payload=started, actor=actor)
            await self._append(session_subject(session_id), event, version=1, expected_seq=0)
        return self._tokens(account, session_id, refresh, mfa=used_mfa)

    async def _set_password(self, account: Account, password_hash: str, actor: str, read: tuple[int, int]) -> None:
        sealed = self._seal(password_hash.encode(), PASSWORD_HASH, account.user_id)
        changed = PasswordChanged(user_id=account.user_id, sealed_password_hash=sealed)
        await self._user_event(account, changed, actor, read=read)

    @staticmethod
    def _lockout_event(payload: LoginFailureCounted | LoginFailuresCleared) -> NewEvent:
        return NewEvent(
            aggregate_type="lockout",
            aggregate_id=username_key(payload.account_key),
            payload=payload,
            actor="service:auth",
        )

    # -- failed authentication: one lockout for logins and step-up checks (parley_auth.lockout) --

    def _refuse_while_locked(self, key: str, source: str) -> None:
        """Before a password or code is even checked: the pair's or the address's lockout."""
        if (locked := self.lockouts.check(key, budget_key(source))) is not None:
            raise ResourceExhausted(locked.message)

    async def _failed(
        self, kind: str, *, key: str, source: str, user_id: str, actor: str = "service:auth", detail: str = ""
    ) -> None:
        """A wrong password or code: audited with the client's address, then counted on the AUTH
        stream so every auth instance (and this one after a restart) sees it. Appended without an
        expected sequence: counts add up in any order. Reports the lockout it starts."""
        await self._security(kind, actor=actor, user_id=user_id, username=key, source=source, detail=detail)
        counted = self._lockout_event(LoginFailureCounted(account_key=key, source=source))
        # The caller checked the lockout before trying the secret: a lock this failure starts is a
        # new one, recorded before the failure that starts it is counted.
        recorded: contextlib.AbstractAsyncContextManager[object] = contextlib.nullcontext()
        if (locked := self.lockouts.would_lock(key, budget_key(source))) is not None:
            where = "this account from this address" if locked.scope is Scope.PAIR else "this address"
            recorded = self._recorded(
                "lockout",
                actor="service:auth",
                user_id=user_id,
                username=key,
                source=source,
                detail=f"{where} locked for {locked.retry_after_s:.0f} s",
                locked_until_unix=int(time.time() + locked.retry_after_s),
            )
        async with recorded:
            await self._append(lockout_subject(username_key(key)), counted, version=0, expected_seq=None)

    async def _succeeded(self, key: str, source: str) -> None:
        """The right secret from this address: its pair's count starts again (no other one's)."""
        if self.lockouts.has_failures(key, budget_key(source)):
            cleared = self._lockout_event(LoginFailuresCleared(account_key=key, source=source))
            await self._append(lockout_subject(username_key(key)), cleared, version=0, expected_seq=None)

    async def _step_up(
        self,
        context: Context,
        caller: Caller,
        account: Account,
        *,
        call: str,
        wrong: str,
        proven: Callable[[], Awaitable[bool]],
    ) -> None:
        """A re-authentication inside a session (the current password, a TOTP code): under the
        login's lockout for this account and address, so a stolen session buys no free guesses;
        a failure is a `step_up_failed` security event naming the call and the session, and the
        caller is told `wrong`."""
        source = self._source(context)
        self._refuse_while_locked(account.username, source)
        if not await proven():
            await self._failed(
                "step_up_failed",
                key=account.username,
                source=source,
                user_id=account.user_id,
                actor=f"user:{caller.user_id}",
                detail=f"{call}: {wrong} (session {caller.session_id})",
            )
            raise Unauthenticated(wrong)
        await self._succeeded(account.username, source)

    async def _totp_step_up(
        self,
        context: Context,
        caller: Caller,
        account: Account,
        *,
        sealed_secret: bytes,
        after_step: int,
        code: str,
        call: str,
        wrong: str,
    ) -> int:
        """A step-up by TOTP code; returns the code's time step, which the caller spends."""
        assert self._sealer is not None
        secret = self._sealer.open(sealed_secret, account.user_id)
        step: int | None = None

        async def code_matches() -> bool:
            nonlocal step
            step = mfa.matching_step(secret, code, time.time(), after_step=after_step)
            return step is not None

        await self._step_up(context, caller, account, call=call, wrong=wrong, proven=code_matches)
        assert step is not None
        return step

    def _tokens(self, account: Account, session_id: str, refresh: str, *, mfa: bool) -> auth_pb2.LoginResponse:
        assert self._issuer is not None
        token, expires = self._issuer.issue(
            user_id=account.user_id, username=account.username, role=account.role, session_id=session_id, mfa=mfa
        )
        return auth_pb2.LoginResponse(
            access_token=token,
            user_id=account.user_id,
            expires_at_unix=expires,
            refresh_token=refresh,
            session_id=session_id,
            role=account.role,
            mfa_enrolment_required=account.role in self.mfa_required_roles and not mfa,
            mfa_enrolled=(state := self.mfa.get(account.user_id)) is not None and state.enrolled,
        )

    async def _second_factor(self, account: Account, request: auth_pb2.LoginRequest, key: str, source: str) -> bool:
        """True when a TOTP or recovery code was used; refuses when one is enrolled and missing."""
        assert self._sealer is not None
        state = self.mfa.get(account.user_id)
        if state is None or not state.enrolled:
            return False
        if not request.totp_code and not request.recovery_code:
            raise Unauthenticated(
                "this account uses two-factor authentication: send the authenticator app's code as totp_code,"
                " or one of the account's recovery codes as recovery_code"
            )
        actor = f"user:{account.user_id}"
        accepted: Message | None = None
        if request.totp_code:
            secret = self._sealer.open(state.secret, account.user_id)
            step = mfa.matching_step(secret, request.totp_code, time.time(), after_step=state.last_step)
            if step is not None:
                accepted = TotpCodeAccepted(user_id=account.user_id, time_step=step)
        elif (code := mfa.recovery_digest(request.recovery_code[:64])) in state.recovery:
            sealed = self._seal(code, RECOVERY_CODE, account.user_id)
            accepted = RecoveryCodeUsed(user_id=account.user_id, sealed_recovery_code_sha256=sealed)
        if accepted is not None:
            try:
                # Appended on the user's subject at the version we read: of two logins racing
                # with the same code, only one append succeeds.
                await self._user_event(account, accepted, actor)
                return True
            except FailedPrecondition:
                pass
        await self._failed("mfa_failed", key=key, source=source, user_id=account.user_id)
        raise Unauthenticated("the one-time code is wrong or was already used")

    async def Refresh(self, request: auth_pb2.RefreshRequest, context: Context) -> auth_pb2.LoginResponse:
        REQUEST_SOURCE.set(self._source(context))
        session = self.sessions.get(session_id_of(request.refresh_token))
        if session is None or session.revoked or time.time() - session.started_at > REFRESH_TOKEN_LIFETIME_S:
            raise Unauthenticated(REFRESH_INVALID)
        presented = digest(request.refresh_token)
        verdict = session.judge(presented)
        if verdict is RefreshVerdict.UNKNOWN:
            raise Unauthenticated(REFRESH_INVALID)
        account = self.accounts.by_id(session.user_id)
        if account is None:
            raise Unauthenticated("this account was erased; it can no longer be used")
        if account.disabled:
            raise Unauthenticated("this account is disabled; ask an administrator")
        if verdict is RefreshVerdict.REUSED:
            await self._security(
                "refresh_token_reuse",
                actor="service:auth",
                user_id=session.user_id,
                username=account.username,
                source=self._source(context),
                detail=session.session_id,
            )
            await self._revoke(session, "refresh token reuse", "service:auth")
            raise Unauthenticated("this refresh token was already used; the session is revoked, log in again")
        refresh = new_refresh_token(session.session_id)
        rotated = RefreshTokenRotated(
            session_id=session.session_id,
            user_id=session.user_id,
            sealed_previous_sha256=self._seal(presented, REFRESH_TOKEN, session.session_id),
            sealed_refresh_token_sha256=self._seal(digest(refresh), REFRESH_TOKEN, session.session_id),
            source=self._source(context),
        )
        try:
            await self._session_event(session, rotated, f"user:{session.user_id}")
        except FailedPrecondition:
            # Another refresh with the same token won the race: that is reuse too.
            raise Unauthenticated("this refresh token was already used; log in again") from None
        return self._tokens(account, session.session_id, refresh, mfa=session.mfa)

    async def Logout(self, request: auth_pb2.LogoutRequest, context: Context) -> auth_pb2.LogoutResponse:
        caller = self._caller(context)
        session = self.sessions.get(caller.session_id)
        if session is not None:
            await self._revoke(session, "logout", f"user:{caller.user_id}")
        return auth_pb2.LogoutResponse()

    async def ChangePassword(
        self, request: auth_pb2.ChangePasswordRequest, context: Context
    ) -> auth_pb2.ChangePasswordResponse:
        caller = self._caller(context)
        account = self._account(caller.user_id)
        if not request.current_password or len(request.current_password) > MAX_PASSWORD_LENGTH:
            raise InvalidArgument(f"current_password is required (at most {MAX_PASSWORD_LENGTH} characters)")
        await self._step_up(
            context,
            caller,
            account,
            call="ChangePassword",
            wrong="the current password is wrong",
            proven=lambda: verify_password(account.password_hash, request.current_password),
        )
        check_password_policy(request.new_password, account.username)
        read = _read(account)  # the password checked was this version's
        new_hash = await hash_password(request.new_password)
        actor = f"user:{caller.user_id}"
        async with self._recorded("password_changed", actor=actor, user_id=account.user_id, username=account.username):
            await self._set_password(account, new_hash, actor, read)
        for session in self.sessions.of_user(account.user_id):
            if session.session_id != caller.session_id:
                await self._revoke(session, "password changed", actor)
        return auth_pb2.ChangePasswordResponse()

    async def ListSessions(
        self, request: auth_pb2.ListSessionsRequest, context: Context
    ) -> auth_pb2.ListSessionsResponse:
        caller = self._caller(context)
        user_id = request.user_id or caller.user_id
        if user_id != caller.user_id:
            caller.require(Permission.SESSIONS_READ_ANY, what="listing another user's sessions")
            self._account(user_id)
        return auth_pb2.ListSessionsResponse(sessions=[session_proto(s) for s in self.sessions.of_user(user_id)])

    async def RevokeSession(
        self, request: auth_pb2.RevokeSessionRequest, context: Context
    ) -> auth_pb2.RevokeSessionResponse:
        caller = self._caller(context)
        session = self.sessions.get(_id(request.session_id, "session_id"))
        if session is None:
            raise NotFound("no such session")
        if session.user_id != caller.user_id:
            check_account_action(caller, AccountAction.REVOKE_SESSIONS, self.accounts.by_id(session.user_id))
        await self._revoke(session, f"revoked by user:{caller.user_id}", f"user:{caller.user_id}")
        return auth_pb2.RevokeSessionResponse()

    # -- MFA ------------------------------------------------------------------------------------

    async def BeginTotpEnrolment(
        self, request: auth_pb2.BeginTotpEnrolmentRequest, context: Context
    ) -> auth_pb2.BeginTotpEnrolmentResponse:
        assert self._sealer is not None
        caller = self._caller(context)
        account = self._account(caller.user_id)
        if (state := self.mfa.get(account.user_id)) is not None and state.enrolled:
            raise FailedPrecondition("TOTP is already enrolled for this account")
        secret = mfa.new_secret()
        sealed = self._sealer.seal(secret, account.user_id)
        await self._user_event(
            account, TotpEnrolmentStarted(user_id=account.user_id, sealed_secret=sealed), f"user:{account.user_id}"
        )
        return auth_pb2.BeginTotpEnrolmentResponse(
            otpauth_uri=mfa.provisioning_uri(secret, account.username), secret_base32=mfa.secret_base32(secret)
        )

    async def ConfirmTotpEnrolment(
        self, request: auth_pb2.ConfirmTotpEnrolmentRequest, context: Context
    ) -> auth_pb2.ConfirmTotpEnrolmentResponse:
        assert self._sealer is not None
        caller = self._caller(context)
        account = self._account(caller.user_id)
        state = self.mfa.get(account.user_id)
        if state is None or not state.pending_secret:
            raise FailedPrecondition("no TOTP enrolment in progress; call BeginTotpEnrolment first")
        if len(request.totp_code) != mfa.DIGITS or not request.totp_code.isdigit():
            raise InvalidArgument(f"totp_code must be the {mfa.DIGITS} digits the authenticator app shows")
        step = await self._totp_step_up(
            context,
            caller,
            account,
            sealed_secret=state.pending_secret,
            after_step=state.last_step,
            code=request.totp_code,
            call="ConfirmTotpEnrolment",
            wrong="the code does not match; check the authenticator app's clock and try the next code",
        )
        codes = mfa.new_recovery_codes()
        actor = f"user:{account.user_id}"
        enrolled = TotpEnrolled(
            user_id=account.user_id, sealed_recovery_codes=self._sealed_recovery_codes(codes, account.user_id)
        )
        read = _read(account)
        async with self._recorded("mfa_enrolled", actor=actor, user_id=account.user_id, username=account.username):
            await self._user_event(account, enrolled, actor, read=read)
            # The confirming code is spent too: it cannot be replayed at login.
            await self._user_event(account, TotpCodeAccepted(user_id=account.user_id, time_step=step), actor)
        return auth_pb2.ConfirmTotpEnrolmentResponse(recovery_codes=codes)

    async def SetMfaRequired(
        self, request: auth_pb2.SetMfaRequiredRequest, context: Context
    ) -> auth_pb2.SetMfaRequiredResponse:
        caller = self._caller_or_platform(context)
        role = validate_role(request.role)
        actor = f"user:{caller.user_id}" if caller else PLATFORM_USER
        event = NewEvent(
            aggregate_type="policy",
            aggregate_id="mfa",
            payload=MfaRequirementSet(role=role, required=request.required),
            actor=actor,
        )
        async with self._recorded("mfa_policy_changed", actor=actor, detail=f"{role}: required={request.required}"):
            await self._append(MFA_POLICY_SUBJECT, event, version=0, expected_seq=None)
        return auth_pb2.SetMfaRequiredResponse()

    async def ResetMfa(self, request: auth_pb2.ResetMfaRequest, context: Context) -> auth_pb2.Account:
        """Removes a user's TOTP and recovery codes (a lost or stolen phone) and revokes every
        session of that user: whoever holds a session may be the one holding the phone, so the
        user logs in again with the password alone and enrols a new authenticator."""
        account, actor = self._administered(context, request.user_id, request.reason, AccountAction.RESET_MFA)
        state = self.mfa.get(account.user_id)
        if state is None or not (state.enrolled or state.pending_secret):
            raise FailedPrecondition(f"{account.username} has no two-factor authentication to reset")
        read = _read(account)
        async with self._recorded(
            "mfa_reset", actor=actor, user_id=account.user_id, username=account.username, detail=request.reason
        ):
            await self._user_event(account, TotpReset(user_id=account.user_id, reason=request.reason), actor, read=read)
        for session in self.sessions.of_user(account.user_id):
            await self._revoke(session, "two-factor authentication reset", actor)
        return account_proto(account)

    async def UnlockAccount(self, request: auth_pb2.UnlockAccountRequest, context: Context) -> auth_pb2.Account:
        """Ends the account's lockouts from every address and forgets its failure counts (the
        owner locked out by a guesser, or by their own typos); audited as `lockout_cleared`. An
        address's lockout across accounts stays: that one guards every other account."""
        account, actor = self._administered(context, request.user_id, request.reason, AccountAction.UNLOCK)
        key = account.username
        if not self.lockouts.account_has_failures(key):
            raise FailedPrecondition(f"{account.username} has no failed logins to clear: not locked out")
        addresses, _ = self.lockouts.account_lockouts(key)
        detail = f"{addresses} address(es) locked out; {request.reason}".rstrip("; ")
        async with self._recorded(
            "lockout_cleared", actor=actor, user_id=account.user_id, username=account.username, detail=detail
        ):
            cleared = self._lockout_event(LoginFailuresCleared(account_key=key, source=""))
            await self._append(lockout_subject(username_key(key)), cleared, version=0, expected_seq=None)
        self.lockouts.record_success(key)  # this instance at once; the event tells the others
        return account_proto(account, self.lockouts)

    async def LiftSourceSlowdown(
        self, request: auth_pb2.LiftSourceSlowdownRequest, context: Context
    ) -> auth_pb2.LiftSourceSlowdownResponse:
        """Ends the detector's slow-down of an address before its time (a shared office address
        slowed by colleagues' typos); audited as `source_slowdown_lifted`. The interceptor checked
        the caller's permission (rbac: users.manage) or the platform identity."""
        caller = self._caller_or_platform(context)
        actor = f"user:{caller.user_id}" if caller else PLATFORM_USER
        if len(request.reason) > MAX_REASON_LENGTH:
            raise InvalidArgument(f"reason must be at most {MAX_REASON_LENGTH} characters")
        wanted = request.source.strip()
        if not wanted or len(wanted) > MAX_SOURCE_LENGTH:
            raise InvalidArgument("source is required: the address as the source_slowed audit record names it")
        slowed = self.lockouts.slowed_now()
        # The address as recorded (ipv4:203.0.113.9), or as a person types it (203.0.113.9).
        key = next(
            (k for k in (budget_key(c) for c in (wanted, f"ipv4:{wanted}", f"ipv6:[{wanted}]")) if k in slowed), None
        )
        if key is None and not is_address(wanted):
            raise InvalidArgument(
                f"{wanted!r} is not a client address: give it as the source_slowed audit record names it "
                "(ipv4:203.0.113.9, or just 203.0.113.9)"
            )
        if key is None:
            now_slowed = ", ".join(sorted(slowed)[:10]) or "none"
            raise NotFound(f"{wanted} is not slowed down; addresses slowed now: {now_slowed}")
        until = slowed[key]
        lifted = SourceSlowdownLifted(source=key, lifted_until=until, reason=request.reason)
        event = NewEvent(aggregate_type="slowed", aggregate_id=username_key(key), payload=lifted, actor=actor)
        detail = f"was slowed until {utc_text(until)}; {request.reason}".rstrip("; ")[:MAX_NOT_MADE_DETAIL]
        async with self._recorded("source_slowdown_lifted", actor=actor, user_id="", source=key, detail=detail):
            await self.append_and_apply(slowed_source_subject(username_key(key)), event)
        return auth_pb2.LiftSourceSlowdownResponse(source=key, was_slowed_until_unix=until)

    async def RequestErasure(
        self, request: auth_pb2.RequestErasureRequest, context: Context
    ) -> auth_pb2.RequestErasureResponse:
        """The one way an erasure is authorised (storage_due.py acts on nothing else): the user
        themself, or the platform identity acting for them; audited as `account_erasure_requested`."""
        caller = self._caller_or_platform(context)
        user_id = _id(request.user_id, "user_id")
        if len(request.reason) > MAX_REASON_LENGTH:
            raise InvalidArgument(f"reason must be at most {MAX_REASON_LENGTH} characters")
        if caller is not None and caller.user_id != user_id:
            raise PermissionDenied("only the user themself, or the operator on their behalf, may erase an account")
        if user_id in self.erasure_requests:
            return auth_pb2.RequestErasureResponse(already_requested=True)  # e.g. finishing one cut short
        account = self._account(user_id)
        actor = f"user:{caller.user_id}" if caller else PLATFORM_USER
        requested = AccountErasureRequested(user_id=user_id, requested_by=actor, reason=request.reason)
        event = NewEvent(
            aggregate_type="erasure",
            aggregate_id=user_id,
            payload=requested,
            actor=actor,
            event_id=f"erasure-requested-{user_id}",
        )
        async with self._recorded(
            "account_erasure_requested",
            actor=actor,
            user_id=user_id,
            username=account.username,
            detail=request.reason,
        ):
            await self._append(erasure_request_subject(user_id), event, version=1, expected_seq=0)
        return auth_pb2.RequestErasureResponse()

    async def RegenerateRecoveryCodes(
        self, request: auth_pb2.RegenerateRecoveryCodesRequest, context: Context
    ) -> auth_pb2.RegenerateRecoveryCodesResponse:
        """New recovery codes replace all earlier ones. A stolen access token alone is not
        enough: the caller proves presence with a current TOTP code or the password."""
        assert self._sealer is not None
        caller = self._caller(context)
        account = self._account(caller.user_id)
        state = self.mfa.get(account.user_id)
        if state is None or not state.enrolled:
            raise FailedPrecondition("two-factor authentication is not enrolled; enrol TOTP first")
        if len(request.totp_code) > 16 or len(request.password) > MAX_PASSWORD_LENGTH:
            raise InvalidArgument("totp_code or password is too long")
        actor = f"user:{account.user_id}"
        if request.totp_code:
            step = await self._totp_step_up(
                context,
                caller,
                account,
                sealed_secret=state.secret,
                after_step=state.last_step,
                code=request.totp_code,
                call="RegenerateRecoveryCodes",
                wrong="the one-time code is wrong or was already used",
            )
            # Spent like a login code, on the user's subject: a racing use of the same code loses.
            await self._user_event(account, TotpCodeAccepted(user_id=account.user_id, time_step=step), actor)
        elif request.password:
            await self._step_up(
                context,
                caller,
                account,
                call="RegenerateRecoveryCodes",
                wrong="the password is wrong",
                proven=lambda: verify_password(account.password_hash, request.password),
            )
        else:
            raise InvalidArgument("give a current TOTP code (totp_code) or your password (password)")
        codes = mfa.new_recovery_codes()
        regenerated = RecoveryCodesRegenerated(
            user_id=account.user_id, sealed_recovery_codes=self._sealed_recovery_codes(codes, account.user_id)
        )
        read = _read(account)
        async with self._recorded(
            "recovery_codes_regenerated", actor=actor, user_id=account.user_id, username=account.username
        ):
            await self._user_event(account, regenerated, actor, read=read)
        return auth_pb2.RegenerateRecoveryCodesResponse(recovery_codes=codes)

    # -- E2EE key directory ------------------------------------------------------------------

    async def _settle(self) -> None:
        """After a lost race, let the projection catch up with the stream before deciding again."""
        assert self._replay is not None
        info = await self.ctx.bus.js.stream_info("AUTH")
        await self._replay.wait_for_seq(info.state.last_seq)

    def _device_event(self, device_user: str, device_id: str, payload: Message, actor: str) -> NewEvent:
        return NewEvent(
            aggregate_type="device", aggregate_id=f"{device_user}.{device_id}", payload=payload, actor=actor
        )

    async def PublishDeviceKeys(self, request: auth_pb2.PublishDeviceKeysRequest, context: Context) -> auth_pb2.Device:
        caller = self._caller(context)
        keys.check_device_keys(
            caller.user_id,
            request.device_id,
            curve25519=request.curve25519,
            ed25519=request.ed25519,
            signature=request.signature,
            display_name=request.display_name,
        )
        if (caller.user_id, request.device_id) in self.keys.removed:
            raise AlreadyExists("this device id was removed; register the device under a new id")
        existing = self.keys.get(caller.user_id, request.device_id)
        if existing is not None:
            if (existing.curve25519, existing.ed25519) == (request.curve25519, request.ed25519):
                return device_proto(existing)
            raise AlreadyExists("this device id already has other identity keys; register the device under a new id")
        if len(self.keys.of_user(caller.user_id)) >= keys.MAX_DEVICES_PER_USER:
            raise ResourceExhausted(f"at most {keys.MAX_DEVICES_PER_USER} devices per user; remove one first")
        published = DeviceKeysPublished(
            user_id=caller.user_id,
            device_id=request.device_id,
            curve25519=request.curve25519,
            ed25519=request.ed25519,
            signature=request.signature,
            display_name=request.display_name,
        )
        event = self._device_event(caller.user_id, request.device_id, published, f"user:{caller.user_id}")
        try:
            await self._append(device_subject(caller.user_id, request.device_id), event, version=1, expected_seq=0)
        except FailedPrecondition:
            raise AlreadyExists("this device id was registered at the same time; use a new device id") from None
        device = self.keys.get(caller.user_id, request.device_id)
        assert device is not None
        return device_proto(device)

    async def _change_device(
        self, user_id: str, device_id: str, actor: str, decide: Callable[[keys.DeviceRecord | None], Message | None]
    ) -> keys.DeviceRecord | None:
        """The one way a device's keys change: `decide` makes the event from the device as read
        (None: nothing to append), appended at the device subject's sequence it was read at, so
        two racing changes (a second claim of the same key, from any instance) never both land:
        the loser catches up and decides again. Returns the device after the change."""
        async with self._device_locks.setdefault((user_id, device_id), asyncio.Lock()):
            for _ in range(APPEND_ATTEMPTS):
                device = self.keys.get(user_id, device_id)
                payload = decide(device)
                if payload is None:
                    return device
                assert device is not None
                event = self._device_event(user_id, device_id, payload, actor)
                try:
                    await self._append(
                        device_subject(user_id, device_id),
                        event,
                        version=device.version + 1,
                        expected_seq=device.last_seq,
                    )
                except FailedPrecondition:
                    await self._settle()
                    continue
                return device
        raise FailedPrecondition("the device's keys are changing too fast; try again")

    async def UploadOneTimeKeys(
        self, request: auth_pb2.UploadOneTimeKeysRequest, context: Context
    ) -> auth_pb2.UploadOneTimeKeysResponse:
        caller = self._caller(context)
        device_id = keys.validate_device_id(request.device_id)
        uploaded = [keys.StoredKey(k.key_id, k.key, k.signature) for k in request.keys]
        fb = request.fallback_key
        fallback = keys.StoredKey(fb.key_id, fb.key, fb.signature) if request.HasField("fallback_key") else None

        def decide(device: keys.DeviceRecord | None) -> Message:
            if device is None:
                raise NotFound("no such device of yours; publish its identity keys first")
            device.check_upload(uploaded, fallback)
            payload = OneTimeKeysUploaded(
                user_id=caller.user_id,
                device_id=device_id,
                keys=[UploadedOneTimeKey(key_id=k.key_id, key=k.key, signature=k.signature) for k in uploaded],
            )
            if fallback is not None:
                payload.fallback_key.CopyFrom(
                    UploadedOneTimeKey(key_id=fallback.key_id, key=fallback.key, signature=fallback.signature)
                )
            return payload

        device = await self._change_device(caller.user_id, device_id, f"user:{caller.user_id}", decide)
        assert device is not None
        return auth_pb2.UploadOneTimeKeysResponse(one_time_keys_left=len(device.unclaimed))

    async def ClaimOneTimeKey(
        self, request: auth_pb2.ClaimOneTimeKeyRequest, context: Context
    ) -> auth_pb2.ClaimedOneTimeKey:
        caller = self._caller(context)
        user_id = _id(request.user_id, "user_id")
        device_id = keys.validate_device_id(request.device_id)
        chosen: list[keys.StoredKey] = []

        def decide(device: keys.DeviceRecord | None) -> Message | None:
            if device is None:
                raise NotFound("no such device")
            key = device.next_key()
            if key is None:
                if device.fallback is None:
                    raise FailedPrecondition(
                        "this device has no one-time keys left and no fallback key; its owner must upload more"
                    )
                chosen[:] = [device.fallback]
                return None  # reusable until replaced: nothing to record, nothing to race for
            chosen[:] = [key]
            return OneTimeKeyClaimed(user_id=user_id, device_id=device_id, key_id=key.key_id, claimed_by=caller.user_id)

        device = await self._change_device(user_id, device_id, f"user:{caller.user_id}", decide)
        assert device is not None
        (key,) = chosen
        return auth_pb2.ClaimedOneTimeKey(
            device=device_proto(device),
            one_time_key=auth_pb2.OneTimeKey(key_id=key.key_id, key=key.key, signature=key.signature),
            fallback=key is device.fallback,
        )

    async def ListDevices(self, request: auth_pb2.ListDevicesRequest, context: Context) -> auth_pb2.ListDevicesResponse:
        caller = self._caller(context)
        if request.user_ids:
            if len(request.user_ids) > MAX_USERS_PER_DEVICE_LIST:
                raise InvalidArgument(f"ask for at most {MAX_USERS_PER_DEVICE_LIST} users at once")
            user_ids = list(dict.fromkeys(request.user_ids))
        else:
            user_ids = [request.user_id or caller.user_id]
            self._account(user_ids[0])
        return auth_pb2.ListDevicesResponse(devices=[device_proto(d) for u in user_ids for d in self.keys.of_user(u)])

    async def RemoveDevice(
        self, request: auth_pb2.RemoveDeviceRequest, context: Context
    ) -> auth_pb2.RemoveDeviceResponse:
        caller = self._caller(context)
        device_id = keys.validate_device_id(request.device_id)

        def decide(device: keys.DeviceRecord | None) -> Message | None:
            if device is None:
                if (caller.user_id, device_id) in self.keys.removed:
                    return None  # a retried removal
                raise NotFound("no such device of yours; `parley devices` lists them")
            return DeviceRemoved(user_id=caller.user_id, device_id=device_id, removed_by=caller.user_id)

        actor = f"user:{caller.user_id}"
        if self.keys.get(caller.user_id, device_id) is None:
            await self._change_device(caller.user_id, device_id, actor, decide)  # a retry, or NOT_FOUND
            return auth_pb2.RemoveDeviceResponse()
        async with self._recorded("device_removed", actor=actor, user_id=caller.user_id, detail=device_id):
            await self._change_device(caller.user_id, device_id, actor, decide)
        return auth_pb2.RemoveDeviceResponse()
