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
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.message import Message
from parley.auth.v1 import auth_pb2, auth_pb2_grpc
from parley.auth.v1.events_pb2 import (
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
    RecoveryCodesRegenerated,
    RecoveryCodeUsed,
    RefreshTokenRotated,
    SessionStarted,
    SessionStepUpRequired,
    SourceSlowdownLifted,
    SourceSlowed,
    TotpCodeAccepted,
    TotpEnrolled,
    UploadedOneTimeKey,
)

from parley_auth import codec, domain, keys, mfa
from parley_auth.audit_key import AUDIT_KEY_FILE, AuditSigner
from parley_auth.audit_trail import MAX_NOT_MADE_DETAIL, REQUEST_SOURCE, AuditTrail
from parley_auth.domain import (
    DEFAULT_ROLE,
    MAX_PASSWORD_LENGTH,
    USERNAME_UNAVAILABLE,
    Account,
    LoginVerdict,
    actor_of,
    check_name_claimable,
    check_password_policy,
    checked_id,
    normalize_username,
    username_key,
    validate_role,
)
from parley_auth.event_log import AuthLog
from parley_auth.lockout import LockoutBook, Scope
from parley_auth.passwords import hash_password, needs_rehash, verify_password
from parley_auth.projection import AuthProjection, InviteState
from parley_auth.sealing import (
    RECOVERY_CODE,
    RECOVERY_CODES,
    REFRESH_TOKEN,
    SecretSealer,
)
from parley_auth.sessions import (
    REFRESH_TOKEN_LIFETIME_S,
    RefreshVerdict,
    Session,
    digest,
    new_refresh_token,
    session_id_of,
)
from parley_auth.settings import AuthSettings
from parley_auth.signing_key_job import SigningKeyJob
from parley_auth.storage_due import StorageDue
from parley_core.bus import ConcurrencyConflict, DurableConsumer, ReceivedEvent, Replay
from parley_core.config import AUTH_SEALING_KEY_FILE
from parley_core.envelope import NewEvent
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
from parley_core.rbac import AccountAction, Permission
from parley_core.runner import RefusedToStart, RunContext, peer_names
from parley_core.sources import MAX_SOURCE_LENGTH, SOURCE_METADATA, budget_key, client_address, is_address
from parley_core.tokens import Caller, bearer_token
from parley_core.topology import (
    CONSUMERS,
    PLATFORM_USER,
    audit_key_subject,
    erasure_request_subject,
    lockout_subject,
    slowed_source_subject,
    stream_subject,
    user_subject,
    username_subject,
)

MAX_USERS_PER_DEVICE_LIST = 100
MAX_USERS_PER_LOOKUP = 200  # a screenful of people; ids are random, so this is no enumeration
MFA_POLICY_SUBJECT = stream_subject("auth", "policy", "mfa")
APPEND_ATTEMPTS = 5
INVITE_DEFAULT_HOURS = 72
INVITE_MAX_HOURS = 720
# Erasures storage recorded for auth are marked before it serves, for at most this long.
DUE_CATCH_UP_S = 30.0


def invite_subject(invite_sha256: bytes) -> str:
    return stream_subject("auth", "invite", invite_sha256.hex())


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
REFRESH_INVALID = "refresh token is invalid or expired; log in again"

Context = grpc.aio.ServicerContext[Any, Any]


def utc_text(unix: float) -> str:
    """A time as audit records state it: read by people (`audit query`), so not epoch seconds."""
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def session_subject(session_id: str) -> str:
    return stream_subject("auth", "session", session_id)


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
        self.projection = AuthProjection(
            lockouts=LockoutBook(
                pair_policy=self.settings.lockout_policy(per_source=False),
                source_policy=self.settings.lockout_policy(per_source=True),
            )
        )
        # The projection's state under the names the handlers (and storage_due.py) read it by.
        p = self.projection
        self.accounts = p.accounts
        self.sessions = p.sessions
        self.lockouts = p.lockouts
        self.mfa = p.mfa
        self.mfa_required_roles = p.mfa_required_roles
        self.keys = p.keys
        self.signing_keys = p.signing_keys
        self.invites = p.invites
        self.audit_keys = p.audit_keys
        self.username_holders = p.username_holders
        self.erasure_markers = p.erasure_markers
        self.evidence = p.evidence
        self.erased_users = p.erased_users
        self.erasure_requests = p.erasure_requests
        self.subject_versions = p.subject_versions
        self.signing = SigningKeyJob(
            p.signing_keys,
            rotation_s=self.settings.signing_key_rotation_seconds,
            token_lifetime_s=self.settings.access_token_seconds,
        )
        per_hour = self.settings.registrations_per_source_per_hour
        self.registrations = TokenBuckets(rate=per_hour / 3600, burst=per_hour)
        self._device_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._sealer: SecretSealer | None = None
        self._audit_signer: AuditSigner | None = None
        self._ctx: RunContext | None = None
        self._replay: Replay | None = None
        self._due: DurableConsumer | None = None
        self._audit_trail: AuditTrail | None = None
        self._events: AuthLog | None = None

    async def start(self, ctx: RunContext) -> None:
        self._ctx = ctx
        self.signing.load(ctx.settings.secrets_dir)
        self._sealer = SecretSealer.load_or_create(ctx.settings.secrets_dir / AUTH_SEALING_KEY_FILE)
        self.projection.sealer = self._sealer
        self._audit_signer = AuditSigner.load_or_create(ctx.settings.secrets_dir / AUDIT_KEY_FILE)
        # login_failed and lockout among them: what the alert rules watch, at 0 before the first.
        records = ctx.metrics.counter(
            "parley_security_records",
            "Audit records written on SEC, per kind",
            ("kind",),
            zeroed=[(kind,) for kind in ("login_failed", "lockout", "change_not_made")],
            heartbeat=True,  # failed logins per minute on the console's Health page
        )
        self._audit_trail = AuditTrail(ctx.bus, self._audit_signer, self.projection.published_keys, records)
        self._replay = await ctx.bus.replay(stream="AUTH", filter_subject="parley.auth.>", handler=self._apply)
        self._events = AuthLog(ctx.bus, self._replay)
        await self._replay.wait_caught_up()
        await self.audit.load_head()  # once the published audit keys are known
        await self._refuse_unexplained_gaps()
        await self._publish_audit_key()
        # An erased name is tombstoned before a registration can take it: a restored folder's
        # erasures are handed over this way.
        [due] = [c for c in CONSUMERS if c.service == "auth"]
        self._due = await ctx.bus.consume(due, StorageDue(self).handle)
        if not await self._due.wait_drained(DUE_CATCH_UP_S):
            log.warning("storage's due erasures not all marked before serving; marking goes on")
        self.signing.connect(ctx.bus, self.events, self.audit)
        await self.signing.publish_first()
        auth_pb2_grpc.add_AuthServiceServicer_to_server(self, ctx.server)
        ctx.add_service_name(auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name)
        self.signing.start()

    async def stop(self) -> None:
        await self.signing.stop()

    @property
    def ctx(self) -> RunContext:
        assert self._ctx is not None
        return self._ctx

    @property
    def events(self) -> AuthLog:
        assert self._events is not None, "the event log is set up at start"
        return self._events

    @property
    def audit(self) -> AuditTrail:
        assert self._audit_trail is not None, "the audit trail is set up at start"
        return self._audit_trail

    @property
    def sec_messages_read(self) -> int:
        return self.audit.messages_read

    @property
    def signing_key_id(self) -> str:
        """The key this instance signs access tokens with now."""
        return self.signing.issuer.key_id

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
            await self.events.append(audit_key_subject(signer.key_id), event, version=1, expected_seq=0)
        await self.events.settle()

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
            await self.audit.write("event_log_gap", actor="service:auth", detail=detail)
        raise RefusedToStart(
            f"{len(gaps)} event(s) are missing from AUTH with no erasure to explain them ({detail}): rebuilding"
            " without them would undo what they recorded; restore them from the archive or a backup"
        )

    # -- sealed secrets (parley_auth.sealing): every service reads AUTH, only auth opens them ----

    async def _apply(self, event: ReceivedEvent) -> None:
        self.signing.saw(self.projection.apply_received(event))

    def _seal(self, value: bytes, field: str, owner: str) -> bytes:
        assert self._sealer is not None
        return self._sealer.seal_field(value, field=field, owner=owner)

    def _sealed_recovery_codes(self, codes: list[str], user_id: str) -> bytes:
        return self._seal(b"".join(mfa.recovery_digest(c) for c in codes), RECOVERY_CODES, user_id)

    # -- writing ----------------------------------------------------------------------------

    async def _user_event(
        self, account: Account, payload: Message, actor: str, *, read: tuple[int, int] | None = None
    ) -> None:
        """Appended at the account's version and sequence as they were when the change was
        decided (`read`, from `_read`: taken before the audit record is written, which yields to
        other calls), so a change that raced it refuses this one; by default as they are now."""
        version, seq = read or _read(account)
        event = NewEvent(aggregate_type="user", aggregate_id=account.user_id, payload=payload, actor=actor)
        await self.events.append(user_subject(account.user_id), event, version=version + 1, expected_seq=seq)

    async def _user_events(
        self, account: Account, events: list[domain.Event], actor: str, *, read: tuple[int, int] | None = None
    ) -> None:
        """A decision's facts about the account, appended in order (the first at `read`)."""
        for event in events:
            await self._user_event(account, self._encode(event), actor, read=read)
            read = None

    def _encode(self, event: domain.Event) -> Message:
        return codec.payload(event, self._seal)

    async def _session_event(self, session: Session, payload: Message, actor: str) -> None:
        event = NewEvent(aggregate_type="session", aggregate_id=session.session_id, payload=payload, actor=actor)
        await self.events.append(
            session_subject(session.session_id), event, version=session.version + 1, expected_seq=session.last_seq
        )

    def _unknown_name(self, typed: str) -> str:
        assert self._sealer is not None
        return self._sealer.unknown_name(typed)

    async def _revoke(self, session: Session, reason: str, actor: str) -> None:
        for revoked in domain.revocation(session, reason):
            detail = f"{session.session_id}: {reason}"
            async with self.audit.recorded("session_revoked", actor=actor, user_id=session.user_id, detail=detail):
                await self._session_event(session, self._encode(revoked), actor)

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
        async with self.audit.recorded(
            "step_up_required", actor="service:storage", user_id=session.user_id, detail=detail
        ):
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
        async with self.audit.recorded(
            "source_slowed", actor="service:storage", user_id="", source=slowed.source, detail=detail
        ):
            await self.events.append_after_last(slowed_source_subject(key), event)

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
        return account, domain.check_administered(caller, account, reason, action)

    def _account(self, user_id: str) -> Account:
        account = self.accounts.by_id(checked_id(user_id, "user_id"))
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
        domain.check_name_available(self.accounts, username, self_service=self_service)
        return username, password_hash

    async def _create(self, username: str, password_hash: str, role: str, actor: str, user_id: str) -> Account:
        assert self._replay is not None
        [registered], _ = domain.decide_register(
            self.accounts,
            user_id=user_id,
            username=username,
            role=role,
            password_hash=password_hash,
            self_service=False,
        )
        event = NewEvent(
            aggregate_type="user",
            aggregate_id=user_id,
            payload=self._encode(registered),
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
        async with self.audit.recorded(
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
            await self.events.append(invite_subject(invite_hash), redeemed, version=2, expected_seq=invite.last_seq)
        except FailedPrecondition:
            raise PermissionDenied("this invitation was used at the same moment; ask for a new one") from None

    async def CreateInvite(self, request: auth_pb2.CreateInviteRequest, context: Context) -> auth_pb2.Invite:
        caller = self._caller_or_platform(context)
        role = domain.check_may_grant(caller, request.role, what="invite a")
        hours = request.valid_hours or INVITE_DEFAULT_HOURS
        if not 1 <= hours <= INVITE_MAX_HOURS:
            raise InvalidArgument(f"valid_hours must be 1-{INVITE_MAX_HOURS}")
        code = secrets.token_urlsafe(24)
        invite_hash = hashlib.sha256(code.encode()).digest()
        expires = int(time.time()) + hours * 3600
        actor = actor_of(caller)
        event = NewEvent(
            aggregate_type="invite",
            aggregate_id=invite_hash.hex(),
            payload=InviteCreated(invite_sha256=invite_hash, role=role, created_by=actor, expires_at_unix=expires),
            actor=actor,
        )
        async with self.audit.recorded("invite_created", actor=actor, detail=f"role {role}, valid {hours} h"):
            await self.events.append(invite_subject(invite_hash), event, version=1, expected_seq=0)
        return auth_pb2.Invite(invite_code=code, role=role, expires_at_unix=expires)

    # -- signing keys ---------------------------------------------------------------------------

    async def RotateSigningKey(
        self, request: auth_pb2.RotateSigningKeyRequest, context: Context
    ) -> auth_pb2.SigningKeyInfo:
        caller = self._caller_or_platform(context)
        issuer = await self.signing.rotate(actor_of(caller))
        return auth_pb2.SigningKeyInfo(key_id=issuer.key_id, current=True)

    async def RetireSigningKey(
        self, request: auth_pb2.RetireSigningKeyRequest, context: Context
    ) -> auth_pb2.SigningKeyInfo:
        """Retires a key before its tokens expired (a leaked key): they are refused at once."""
        caller = self._caller_or_platform(context)
        key_id = checked_id(request.key_id, "key_id")
        if key_id not in self.signing_keys:
            raise NotFound("no such signing key")
        if key_id == self.signing_key_id:
            raise FailedPrecondition("this is the key in use; rotate to a new key first")
        await self.signing.retire(key_id, actor_of(caller))
        return auth_pb2.SigningKeyInfo(key_id=key_id, current=False, retired=True)

    async def CreateUser(self, request: auth_pb2.CreateUserRequest, context: Context) -> auth_pb2.Account:
        caller = self._caller_or_platform(context)
        role = domain.check_may_grant(caller, request.role, what="create a user with role")
        actor = actor_of(caller)
        username, password_hash = await self._claimable(
            request.username, request.password, self_service=False, by_platform=caller is None
        )
        user_id = uuid.uuid4().hex
        async with self.audit.recorded(
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
        found = (self.accounts.by_id(checked_id(user_id, "user_id")) for user_id in dict.fromkeys(request.user_ids))
        return auth_pb2.LookupUsersResponse(
            users=[auth_pb2.UserName(user_id=a.user_id, username=a.username) for a in found if a is not None]
        )

    async def AssignRole(self, request: auth_pb2.AssignRoleRequest, context: Context) -> auth_pb2.Account:
        caller = self._caller_or_platform(context)
        account = self._account(request.user_id)
        read = _read(account)
        events, changed = domain.decide_assign_role(account, caller, request.role)
        if changed:
            actor, detail = actor_of(caller), f"{account.role} -> {validate_role(request.role)}"
            async with self.audit.recorded(
                "role_assigned", actor=actor, user_id=account.user_id, username=account.username, detail=detail
            ):
                await self._user_events(account, events, actor, read=read)
        return account_proto(account)

    async def SetAccountDisabled(
        self, request: auth_pb2.SetAccountDisabledRequest, context: Context
    ) -> auth_pb2.Account:
        caller = self._caller_or_platform(context)
        account = self._account(request.user_id)
        events, actor = domain.decide_set_disabled(account, caller, disabled=request.disabled, reason=request.reason)
        if not events:
            return account_proto(account)
        kind, read = "account_disabled" if request.disabled else "account_enabled", _read(account)
        async with self.audit.recorded(
            kind, actor=actor, user_id=account.user_id, username=account.username, detail=request.reason
        ):
            await self._user_events(account, events, actor, read=read)
        return account_proto(account)

    # -- login and sessions -------------------------------------------------------------------

    async def Login(self, request: auth_pb2.LoginRequest, context: Context) -> auth_pb2.LoginResponse:
        REQUEST_SOURCE.set(self._source(context))
        domain.check_login_input(request.username, request.password)
        source = self._source(context)
        try:
            username = normalize_username(request.username)
        except InvalidArgument:
            username = ""
        account = self.accounts.find(username) if username else None
        key = username if account is not None else self._unknown_name(username or request.username.casefold())
        self._refuse_while_locked(key, source)
        ok = await verify_password(account.password_hash if account else None, request.password)
        code_given = bool(request.totp_code or request.recovery_code)
        mfa_state = self.mfa.get(account.user_id) if account else None
        verdict = domain.judge_login(account, ok, mfa_state, code_given=code_given)
        if verdict is LoginVerdict.WRONG or account is None:
            await self._failed("login_failed", key=key, source=source, user_id=account.user_id if account else "")
            raise Unauthenticated(LOGIN_FAILED)
        if verdict is LoginVerdict.DISABLED:
            raise Unauthenticated("this account is disabled; ask an administrator")
        used_mfa = await self._second_factor(account, request, key, source, verdict)
        actor = f"user:{account.user_id}"
        session_id = uuid.uuid4().hex
        refresh = new_refresh_token(session_id)
        new_source = not any(s.source == source for s in self.sessions.of_user(account.user_id))
        read = _read(account)
        async with self.audit.recorded(
            "login_succeeded", actor=actor, user_id=account.user_id, username=account.username, source=source
        ):
            if new_source:
                await self.audit.write(
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
            await self.events.append(session_subject(session_id), event, version=1, expected_seq=0)
        return self._tokens(account, session_id, refresh, mfa=used_mfa)

    async def _set_password(self, account: Account, password_hash: str, actor: str, read: tuple[int, int]) -> None:
        events, _ = domain.decide_change_password(account, password_hash)
        await self._user_events(account, events, actor, read=read)

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
        await self.audit.write(kind, actor=actor, user_id=user_id, username=key, source=source, detail=detail)
        counted = self._lockout_event(LoginFailureCounted(account_key=key, source=source))
        # The caller checked the lockout before trying the secret: a lock this failure starts is a
        # new one, recorded before the failure that starts it is counted.
        recorded: contextlib.AbstractAsyncContextManager[object] = contextlib.nullcontext()
        if (locked := self.lockouts.would_lock(key, budget_key(source))) is not None:
            where = "this account from this address" if locked.scope is Scope.PAIR else "this address"
            recorded = self.audit.recorded(
                "lockout",
                actor="service:auth",
                user_id=user_id,
                username=key,
                source=source,
                detail=f"{where} locked for {locked.retry_after_s:.0f} s",
                locked_until_unix=int(time.time() + locked.retry_after_s),
            )
        async with recorded:
            await self.events.append(lockout_subject(username_key(key)), counted, version=0, expected_seq=None)

    async def _succeeded(self, key: str, source: str) -> None:
        """The right secret from this address: its pair's count starts again (no other one's)."""
        if self.lockouts.has_failures(key, budget_key(source)):
            cleared = self._lockout_event(LoginFailuresCleared(account_key=key, source=source))
            await self.events.append(lockout_subject(username_key(key)), cleared, version=0, expected_seq=None)

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
        token, expires = self.signing.issuer.issue(
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

    async def _second_factor(
        self, account: Account, request: auth_pb2.LoginRequest, key: str, source: str, verdict: LoginVerdict
    ) -> bool:
        """True when a TOTP or recovery code was used; refuses when one is enrolled and missing."""
        assert self._sealer is not None
        if verdict is LoginVerdict.NO_SECOND_FACTOR:
            return False
        state = self.mfa[account.user_id]
        if verdict is LoginVerdict.SECOND_FACTOR_MISSING:
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
            await self.audit.write(
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
        domain.check_current_password_given(request.current_password)
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
        async with self.audit.recorded(
            "password_changed", actor=actor, user_id=account.user_id, username=account.username
        ):
            await self._set_password(account, new_hash, actor, read)
        for session in domain.sessions_to_end(self.sessions.of_user(account.user_id), keep=caller.session_id):
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
        session = self.sessions.get(checked_id(request.session_id, "session_id"))
        owner = self.accounts.by_id(session.user_id) if session is not None else None
        events, _ = domain.decide_revoke_session(session, caller, owner)
        for revoked in events:
            assert session is not None
            assert isinstance(revoked, domain.SessionRevoked)
            await self._revoke(session, revoked.reason, f"user:{caller.user_id}")
        return auth_pb2.RevokeSessionResponse()

    # -- MFA ------------------------------------------------------------------------------------

    async def BeginTotpEnrolment(
        self, request: auth_pb2.BeginTotpEnrolmentRequest, context: Context
    ) -> auth_pb2.BeginTotpEnrolmentResponse:
        assert self._sealer is not None
        caller = self._caller(context)
        account = self._account(caller.user_id)
        secret = mfa.new_secret()
        events, _ = domain.decide_begin_totp(
            account, self.mfa.get(account.user_id), self._sealer.seal(secret, account.user_id)
        )
        await self._user_events(account, events, f"user:{account.user_id}")
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
        async with self.audit.recorded("mfa_enrolled", actor=actor, user_id=account.user_id, username=account.username):
            await self._user_event(account, enrolled, actor, read=read)
            # The confirming code is spent too: it cannot be replayed at login.
            await self._user_event(account, TotpCodeAccepted(user_id=account.user_id, time_step=step), actor)
        return auth_pb2.ConfirmTotpEnrolmentResponse(recovery_codes=codes)

    async def SetMfaRequired(
        self, request: auth_pb2.SetMfaRequiredRequest, context: Context
    ) -> auth_pb2.SetMfaRequiredResponse:
        caller = self._caller_or_platform(context)
        role = validate_role(request.role)
        actor = actor_of(caller)
        event = NewEvent(
            aggregate_type="policy",
            aggregate_id="mfa",
            payload=MfaRequirementSet(role=role, required=request.required),
            actor=actor,
        )
        async with self.audit.recorded(
            "mfa_policy_changed", actor=actor, detail=f"{role}: required={request.required}"
        ):
            await self.events.append(MFA_POLICY_SUBJECT, event, version=0, expected_seq=None)
        return auth_pb2.SetMfaRequiredResponse()

    async def ResetMfa(self, request: auth_pb2.ResetMfaRequest, context: Context) -> auth_pb2.Account:
        """Removes a user's TOTP and recovery codes (a lost or stolen phone) and revokes every
        session of that user: whoever holds a session may be the one holding the phone, so the
        user logs in again with the password alone and enrols a new authenticator."""
        caller = self._caller_or_platform(context)
        account = self._account(request.user_id)
        events, actor = domain.decide_reset_mfa(account, caller, self.mfa.get(account.user_id), request.reason)
        read = _read(account)
        async with self.audit.recorded(
            "mfa_reset", actor=actor, user_id=account.user_id, username=account.username, detail=request.reason
        ):
            await self._user_events(account, events, actor, read=read)
        for session in domain.sessions_to_end(self.sessions.of_user(account.user_id)):
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
        async with self.audit.recorded(
            "lockout_cleared", actor=actor, user_id=account.user_id, username=account.username, detail=detail
        ):
            cleared = self._lockout_event(LoginFailuresCleared(account_key=key, source=""))
            await self.events.append(lockout_subject(username_key(key)), cleared, version=0, expected_seq=None)
        self.lockouts.record_success(key)  # this instance at once; the event tells the others
        return account_proto(account, self.lockouts)

    async def LiftSourceSlowdown(
        self, request: auth_pb2.LiftSourceSlowdownRequest, context: Context
    ) -> auth_pb2.LiftSourceSlowdownResponse:
        """Ends the detector's slow-down of an address before its time (a shared office address
        slowed by colleagues' typos); audited as `source_slowdown_lifted`. The interceptor checked
        the caller's permission (rbac: users.manage) or the platform identity."""
        caller = self._caller_or_platform(context)
        actor = actor_of(caller)
        domain.check_reason(request.reason)
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
        async with self.audit.recorded("source_slowdown_lifted", actor=actor, user_id="", source=key, detail=detail):
            await self.events.append_after_last(slowed_source_subject(username_key(key)), event)
        return auth_pb2.LiftSourceSlowdownResponse(source=key, was_slowed_until_unix=until)

    async def RequestErasure(
        self, request: auth_pb2.RequestErasureRequest, context: Context
    ) -> auth_pb2.RequestErasureResponse:
        """The one way an erasure is authorised (storage_due.py acts on nothing else): the user
        themself, or the platform identity acting for them; audited as `account_erasure_requested`."""
        caller = self._caller_or_platform(context)
        events, already = domain.decide_request_erasure(
            self.accounts, self.erasure_requests, caller, user_id=request.user_id, reason=request.reason
        )
        if already:
            return auth_pb2.RequestErasureResponse(already_requested=True)  # e.g. finishing one cut short
        [requested] = events
        user_id, account, actor = request.user_id, self._account(request.user_id), actor_of(caller)
        event = NewEvent(
            aggregate_type="erasure",
            aggregate_id=user_id,
            payload=self._encode(requested),
            actor=actor,
            event_id=f"erasure-requested-{user_id}",
        )
        async with self.audit.recorded(
            "account_erasure_requested",
            actor=actor,
            user_id=user_id,
            username=account.username,
            detail=request.reason,
        ):
            await self.events.append(erasure_request_subject(user_id), event, version=1, expected_seq=0)
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
        async with self.audit.recorded(
            "recovery_codes_regenerated", actor=actor, user_id=account.user_id, username=account.username
        ):
            await self._user_event(account, regenerated, actor, read=read)
        return auth_pb2.RegenerateRecoveryCodesResponse(recovery_codes=codes)

    # -- E2EE key directory ------------------------------------------------------------------

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
            await self.events.append(
                device_subject(caller.user_id, request.device_id), event, version=1, expected_seq=0
            )
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
                    await self.events.append(
                        device_subject(user_id, device_id),
                        event,
                        version=device.version + 1,
                        expected_seq=device.last_seq,
                    )
                except FailedPrecondition:
                    await self.events.settle()
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
        user_id = checked_id(request.user_id, "user_id")
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
        async with self.audit.recorded("device_removed", actor=actor, user_id=caller.user_id, detail=device_id):
            await self._change_device(caller.user_id, device_id, actor, decide)
        return auth_pb2.RemoveDeviceResponse()
