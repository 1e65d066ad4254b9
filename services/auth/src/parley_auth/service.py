"""The auth service's composition: projection, commands and the gRPC servicer.

Permissions are checked before a handler runs (parley_core.rbac.METHOD_PERMISSIONS, in the
runner's interceptor); handlers check what depends on the target (whose session, which role).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message
from parley.auth.v1 import auth_pb2, auth_pb2_grpc
from parley.auth.v1.events_pb2 import (
    AccountDisabled,
    AccountEnabled,
    AccountErased,
    DeviceKeysPublished,
    InviteCreated,
    InviteRedeemed,
    MfaRequirementSet,
    OneTimeKeyClaimed,
    OneTimeKeysUploaded,
    PasswordChanged,
    RecoveryCodeUsed,
    RefreshTokenRotated,
    RoleAssigned,
    SecurityEventRecorded,
    SessionRevoked,
    SessionStarted,
    SigningKeyPublished,
    SigningKeyRetired,
    TotpCodeAccepted,
    TotpEnrolled,
    TotpEnrolmentStarted,
    UploadedOneTimeKey,
    UserRegistered,
)

from parley_auth import keys, mfa
from parley_auth.domain import (
    DEFAULT_ROLE,
    Account,
    AccountDirectory,
    check_password_policy,
    normalize_username,
    username_key,
    validate_role,
)
from parley_auth.lockout import LockoutBook
from parley_auth.passwords import hash_password, needs_rehash, verify_password
from parley_auth.sessions import (
    REFRESH_TOKEN_LIFETIME_S,
    RefreshVerdict,
    Session,
    SessionBook,
    digest,
    new_refresh_token,
    session_id_of,
)
from parley_auth.signing import TokenIssuer
from parley_core.audit import AuditChain
from parley_core.bus import ConcurrencyConflict, ReceivedEvent, Replay
from parley_core.envelope import NewEvent, decode, open_payload
from parley_core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from parley_core.rbac import Permission, may_assign
from parley_core.runner import RunContext, peer_names
from parley_core.tokens import ALGORITHM, Caller, bearer_token
from parley_core.topology import PLATFORM_USER, signing_key_subject, stream_subject, user_subject, username_subject

USER_EVENTS = (
    RoleAssigned,
    AccountDisabled,
    AccountEnabled,
    PasswordChanged,
    TotpEnrolmentStarted,
    TotpEnrolled,
    TotpCodeAccepted,
    RecoveryCodeUsed,
)
MFA_POLICY_SUBJECT = stream_subject("auth", "policy", "mfa")
APPEND_ATTEMPTS = 5
# Where the current call comes from, for the audit records it writes (one value per call task).
REQUEST_SOURCE: ContextVar[str] = ContextVar("request_source", default="")
INVITE_DEFAULT_HOURS = 72
INVITE_MAX_HOURS = 720


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
    )


log = logging.getLogger(__name__)

LOGIN_FAILED = "username or password is wrong"
AUDIT_APPEND_ATTEMPTS = 5
REFRESH_INVALID = "refresh token is invalid or expired; log in again"
# Metadata the gateway adds with the client's address; trusted only from the gateway.
SOURCE_METADATA = "x-parley-source"
MAX_ID_LENGTH = 64

Context = grpc.aio.ServicerContext[Any, Any]


def session_subject(session_id: str) -> str:
    return stream_subject("auth", "session", session_id)


def security_subject(kind: str, user_id: str) -> str:
    return f"parley.sec.{kind}.{user_id or 'unknown'}"


def _id(value: str, what: str) -> str:
    if not value or len(value) > MAX_ID_LENGTH or not value.isalnum():
        raise InvalidArgument(f"{what} is required: up to {MAX_ID_LENGTH} letters and digits")
    return value


def account_proto(account: Account) -> auth_pb2.Account:
    return auth_pb2.Account(
        user_id=account.user_id, username=account.username, role=account.role, disabled=account.disabled
    )


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
    def __init__(self) -> None:
        self.accounts = AccountDirectory()
        self.sessions = SessionBook()
        self.lockouts = LockoutBook()
        self.mfa: dict[str, mfa.MfaState] = {}
        self.mfa_required_roles: set[str] = set()
        self.keys = keys.KeyDirectory()
        self.signing_keys: dict[str, bool] = {}  # key id -> retired
        self.invites: dict[bytes, InviteState] = {}
        self._device_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._sealer: mfa.SecretSealer | None = None
        self._audit = AuditChain()
        self._audit_lock = asyncio.Lock()
        self._sec_last_seq = 0
        self._ctx: RunContext | None = None
        self._issuer: TokenIssuer | None = None
        self._replay: Replay | None = None

    async def start(self, ctx: RunContext) -> None:
        self._ctx = ctx
        self._issuer = TokenIssuer.load_or_create(ctx.settings.secrets_dir / "auth-signing-key.pem")
        self._sealer = mfa.SecretSealer.load_or_create(ctx.settings.secrets_dir / "auth-mfa-key.bin")
        await self._publish_signing_key(self._issuer)
        await self._load_audit_head()
        self._replay = await ctx.bus.replay(stream="AUTH", filter_subject="parley.auth.>", handler=self._apply)
        await self._replay.wait_caught_up()
        auth_pb2_grpc.add_AuthServiceServicer_to_server(self, ctx.server)
        ctx.add_service_name(auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name)

    async def stop(self) -> None:
        pass

    @property
    def ctx(self) -> RunContext:
        assert self._ctx is not None
        return self._ctx

    async def _publish_signing_key(self, issuer: TokenIssuer) -> None:
        event = NewEvent(
            aggregate_type="signing_key",
            aggregate_id=issuer.key_id,
            payload=SigningKeyPublished(key_id=issuer.key_id, algorithm=ALGORITHM, public_key=issuer.public_key),
            actor="service:auth",
        )
        with contextlib.suppress(ConcurrencyConflict):  # published by an earlier start
            await self.ctx.bus.append(
                signing_key_subject(issuer.key_id), event, aggregate_version=1, expected_last_subject_seq=0
            )

    # -- projection -------------------------------------------------------------------------

    async def _apply(self, event: ReceivedEvent) -> None:
        payload = open_payload(event.envelope)
        at = event.envelope.occurred_at.ToNanoseconds() / 1e9
        if isinstance(payload, UserRegistered):
            self.accounts.add(Account(payload.user_id, payload.username, payload.password_hash, payload.role))
            return
        if isinstance(payload, AccountErased):
            # Its events are being deleted from the stream; its name stays taken (see AccountErased).
            self.accounts.forget(payload.user_id)
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
        if isinstance(payload, DeviceKeysPublished | OneTimeKeysUploaded | OneTimeKeyClaimed):
            self._apply_device(payload, event.stream_seq)
            return
        if isinstance(payload, SigningKeyPublished):
            self.signing_keys.setdefault(payload.key_id, False)
            return
        if isinstance(payload, SigningKeyRetired):
            self.signing_keys[payload.key_id] = True
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
        if isinstance(payload, MfaRequirementSet):
            if payload.required:
                self.mfa_required_roles.add(payload.role)
            else:
                self.mfa_required_roles.discard(payload.role)
            return
        if isinstance(payload, SessionStarted):
            self.sessions.sessions[payload.session_id] = Session(
                session_id=payload.session_id,
                user_id=payload.user_id,
                started_at=at,
                source=payload.source,
                mfa=payload.mfa,
                current=payload.refresh_token_sha256,
                last_refreshed_at=at,
                last_seq=event.stream_seq,
                version=1,
            )
            return
        if isinstance(payload, RefreshTokenRotated | SessionRevoked):
            session = self.sessions.get(payload.session_id)
            if session is None:
                return
            session.last_seq, session.version = event.stream_seq, session.version + 1
            if isinstance(payload, RefreshTokenRotated):
                session.rotate(payload.previous_sha256, payload.refresh_token_sha256, at)
            else:
                session.revoked_reason = payload.reason or "revoked"

    def _apply_device(
        self, payload: DeviceKeysPublished | OneTimeKeysUploaded | OneTimeKeyClaimed, stream_seq: int
    ) -> None:
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
            account.password_hash = payload.password_hash
        elif isinstance(payload, TotpEnrolmentStarted):
            state.pending_secret = payload.sealed_secret
        elif isinstance(payload, TotpEnrolled):
            state.secret, state.pending_secret = state.pending_secret, b""
            state.recovery = set(payload.recovery_code_sha256)
        elif isinstance(payload, TotpCodeAccepted):
            state.last_step = max(state.last_step, payload.time_step)
        elif isinstance(payload, RecoveryCodeUsed):
            state.recovery.discard(payload.recovery_code_sha256)

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
        await self._replay.wait_for_seq(appended.stream_seq)

    async def _user_event(self, account: Account, payload: Message, actor: str) -> None:
        event = NewEvent(aggregate_type="user", aggregate_id=account.user_id, payload=payload, actor=actor)
        await self._append(
            user_subject(account.user_id), event, version=account.user_version + 1, expected_seq=account.user_seq
        )

    async def _session_event(self, session: Session, payload: Message, actor: str) -> None:
        event = NewEvent(aggregate_type="session", aggregate_id=session.session_id, payload=payload, actor=actor)
        await self._append(
            session_subject(session.session_id), event, version=session.version + 1, expected_seq=session.last_seq
        )

    async def _load_audit_head(self) -> None:
        """The chain continues from the newest record on the SEC stream."""
        info = await self.ctx.bus.js.stream_info("SEC")
        self._sec_last_seq = info.state.last_seq
        self._audit = AuditChain()
        if self._sec_last_seq:
            raw = await self.ctx.bus.js.get_msg("SEC", self._sec_last_seq)
            payload = open_payload(decode(raw.data or b""))
            if isinstance(payload, SecurityEventRecorded):
                self._audit.advance(payload)

    async def _security(self, kind: str, *, actor: str, user_id: str = "", **fields: Any) -> None:
        """An audit record on the SEC stream: for the SIEM, and a link in the signed hash chain.

        Appends are ordered after the stream's last message, so two auth instances cannot fork
        the chain: the loser reloads the head and links again. A record that cannot be written
        is logged as an error but does not fail the user's call.
        """
        assert self._issuer is not None
        fields.setdefault("source", REQUEST_SOURCE.get())
        async with self._audit_lock:
            for _ in range(AUDIT_APPEND_ATTEMPTS):
                record = SecurityEventRecorded(
                    kind=kind,
                    user_id=user_id,
                    actor=actor,
                    key_id=self._issuer.key_id,
                    occurred_at_unix_ns=time.time_ns(),
                    **fields,
                )
                self._audit.link(record)
                record.signature = self._issuer.sign(record.record_hash)
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
                    await self._load_audit_head()
                    continue
                except Exception:
                    log.exception("audit record not written", extra={"kind": kind, "user_id": user_id})
                    return
                self._audit.advance(record)
                self._sec_last_seq = appended.stream_seq
                return
            log.error("audit record not written: the SEC stream kept moving", extra={"kind": kind})

    async def _revoke(self, session: Session, reason: str, actor: str) -> None:
        if session.revoked:
            return
        await self._session_event(
            session, SessionRevoked(session_id=session.session_id, user_id=session.user_id, reason=reason), actor
        )
        await self._security(
            "session_revoked", actor=actor, user_id=session.user_id, detail=f"{session.session_id}: {reason}"
        )

    # -- who is calling -----------------------------------------------------------------------

    def _source(self, context: Context) -> str:
        if "gateway" in peer_names(context):
            for key, value in context.invocation_metadata() or ():
                if key == SOURCE_METADATA:
                    return (value.decode() if isinstance(value, bytes) else value)[:128]
        return context.peer()[:128]

    def _caller_or_platform(self, context: Context) -> Caller | None:
        """None when the platform identity calls without a user token (operator tooling)."""
        REQUEST_SOURCE.set(self._source(context))
        if bearer_token(context) is None and PLATFORM_USER in peer_names(context):
            return None
        return self.ctx.tokens.caller(context)

    def _caller(self, context: Context) -> Caller:
        REQUEST_SOURCE.set(self._source(context))
        return self.ctx.tokens.caller(context)

    def _account(self, user_id: str) -> Account:
        account = self.accounts.by_id(_id(user_id, "user_id"))
        if account is None:
            raise NotFound("no such user")
        return account

    # -- accounts -----------------------------------------------------------------------------

    async def _create(self, username_raw: str, password: str, role: str, actor: str, user_id: str = "") -> Account:
        assert self._replay is not None
        username = normalize_username(username_raw)
        check_password_policy(password, username)
        if self.accounts.find(username) is not None:
            raise AlreadyExists("that username is taken")
        user_id = user_id or uuid.uuid4().hex
        password_hash = await hash_password(password)
        event = NewEvent(
            aggregate_type="user",
            aggregate_id=user_id,
            payload=UserRegistered(user_id=user_id, username=username, password_hash=password_hash, role=role),
            actor=actor or f"user:{user_id}",
        )
        try:
            appended = await self.ctx.bus.append(
                username_subject(username_key(username)), event, aggregate_version=1, expected_last_subject_seq=0
            )
        except ConcurrencyConflict:
            raise AlreadyExists("that username is taken") from None
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
        if mode == "open":
            account = await self._create(request.username, request.password, DEFAULT_ROLE, "")
        else:
            account = await self._register_with_invite(request)
        await self._security(
            "account_registered",
            actor=f"user:{account.user_id}",
            user_id=account.user_id,
            username=account.username,
            detail=f"{mode} registration as {account.role}",
        )
        return auth_pb2.RegisterResponse(user_id=account.user_id, username=account.username)

    async def _register_with_invite(self, request: auth_pb2.RegisterRequest) -> Account:
        """The invitation is redeemed (atomically, once) before the account is created; what
        could make the creation fail (name taken, weak password) is checked first, so a valid
        invitation is not burnt by a typo."""
        code = request.invite_code.strip()
        if not code or len(code) > 128:
            raise PermissionDenied("registration is by invitation: give the invite code you received")
        invite_hash = hashlib.sha256(code.encode()).digest()
        invite = self.invites.get(invite_hash)
        if invite is None or invite.redeemed or invite.expires_at_unix < time.time():
            raise PermissionDenied("this invitation is unknown, expired or already used; ask for a new one")
        username = normalize_username(request.username)
        check_password_policy(request.password, username)
        if self.accounts.find(username) is not None:
            raise AlreadyExists("that username is taken")
        user_id = uuid.uuid4().hex
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
        return await self._create(request.username, request.password, invite.role, "", user_id=user_id)

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
        await self._append(invite_subject(invite_hash), event, version=1, expected_seq=0)
        await self._security("invite_created", actor=actor, detail=f"role {role}, valid {hours} h")
        return auth_pb2.Invite(invite_code=code, role=role, expires_at_unix=expires)

    # -- signing keys ---------------------------------------------------------------------------

    async def RotateSigningKey(
        self, request: auth_pb2.RotateSigningKeyRequest, context: Context
    ) -> auth_pb2.SigningKeyInfo:
        caller = self._caller_or_platform(context)
        issuer = TokenIssuer.create(self.ctx.settings.secrets_dir / "auth-signing-key.pem")
        await self._publish_signing_key(issuer)
        # This instance's verifier must know the key before a token signed with it is handed out.
        await self._settle()
        self._issuer = issuer
        actor = f"user:{caller.user_id}" if caller else PLATFORM_USER
        await self._security("signing_key_rotated", actor=actor, detail=issuer.key_id)
        return auth_pb2.SigningKeyInfo(key_id=issuer.key_id, current=True)

    async def RetireSigningKey(
        self, request: auth_pb2.RetireSigningKeyRequest, context: Context
    ) -> auth_pb2.SigningKeyInfo:
        assert self._issuer is not None
        caller = self._caller_or_platform(context)
        key_id = _id(request.key_id, "key_id")
        if key_id not in self.signing_keys:
            raise NotFound("no such signing key")
        if key_id == self._issuer.key_id:
            raise FailedPrecondition("this is the key in use; rotate to a new key first")
        if not self.signing_keys[key_id]:
            actor = f"user:{caller.user_id}" if caller else PLATFORM_USER
            event = NewEvent(
                aggregate_type="signing_key", aggregate_id=key_id, payload=SigningKeyRetired(key_id=key_id), actor=actor
            )
            await self._append(signing_key_subject(key_id), event, version=2, expected_seq=None)
            await self._security("signing_key_retired", actor=actor, detail=key_id)
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
        account = await self._create(request.username, request.password, role, actor)
        await self._security(
            "role_assigned",
            actor=actor,
            user_id=account.user_id,
            username=account.username,
            detail=f"created as {role}",
        )
        return account_proto(account)

    async def GetAccount(self, request: auth_pb2.GetAccountRequest, context: Context) -> auth_pb2.Account:
        account = self.accounts.find(normalize_username(request.username))
        if account is None:
            raise NotFound("no such user")
        return account_proto(account)

    async def AssignRole(self, request: auth_pb2.AssignRoleRequest, context: Context) -> auth_pb2.Account:
        caller = self._caller_or_platform(context)
        account = self._account(request.user_id)
        role = validate_role(request.role)
        if caller is not None and not may_assign(caller.role, target_current_role=account.role, new_role=role):
            raise PermissionDenied(f"role {caller.role!r} may not change {account.role!r} to {role!r}")
        if account.role == role:
            return account_proto(account)
        actor = f"user:{caller.user_id}" if caller else PLATFORM_USER
        previous = account.role
        await self._user_event(account, RoleAssigned(user_id=account.user_id, role=role, previous_role=previous), actor)
        await self._security(
            "role_assigned",
            actor=actor,
            user_id=account.user_id,
            username=account.username,
            detail=f"{previous} -> {role}",
        )
        return account_proto(account)

    async def SetAccountDisabled(
        self, request: auth_pb2.SetAccountDisabledRequest, context: Context
    ) -> auth_pb2.Account:
        caller = self._caller_or_platform(context)
        account = self._account(request.user_id)
        if len(request.reason) > 500:
            raise InvalidArgument("reason must be at most 500 characters")
        if caller is not None and account.role == "owner" and caller.role != "owner":
            raise PermissionDenied("only an owner may disable or re-enable an owner")
        if caller is not None and caller.user_id == account.user_id:
            raise FailedPrecondition("you cannot disable or re-enable your own account")
        if account.disabled == request.disabled:
            return account_proto(account)
        actor = f"user:{caller.user_id}" if caller else PLATFORM_USER
        payload: Message = (
            AccountDisabled(user_id=account.user_id, reason=request.reason)
            if request.disabled
            else AccountEnabled(user_id=account.user_id)
        )
        await self._user_event(account, payload, actor)
        kind = "account_disabled" if request.disabled else "account_enabled"
        await self._security(
            kind, actor=actor, user_id=account.user_id, username=account.username, detail=request.reason
        )
        return account_proto(account)

    # -- login and sessions -------------------------------------------------------------------

    async def Login(self, request: auth_pb2.LoginRequest, context: Context) -> auth_pb2.LoginResponse:
        REQUEST_SOURCE.set(self._source(context))
        if not request.username or not request.password:
            raise InvalidArgument("username and password are required")
        if len(request.username) > 256 or len(request.password) > 1024:
            raise InvalidArgument("username or password is too long")
        source = self._source(context)
        try:
            username = normalize_username(request.username)
        except InvalidArgument:
            username = ""
        key = username or request.username.casefold()
        if (locked := self.lockouts.check(key, source)) is not None:
            raise ResourceExhausted(
                f"too many failed logins from this {locked.scope}; try again in {int(locked.retry_after_s) + 1} s"
            )
        account = self.accounts.find(username) if username else None
        ok = await verify_password(account.password_hash if account else None, request.password)
        if not ok or account is None:
            started = self.lockouts.record_failure(key, source)
            user_id = account.user_id if account else ""
            await self._security("login_failed", actor="service:auth", user_id=user_id, username=key, source=source)
            if started is not None:
                await self._security(
                    "lockout",
                    actor="service:auth",
                    user_id=user_id,
                    username=key,
                    source=source,
                    detail=f"{started.scope} locked for {started.retry_after_s:.0f} s",
                    locked_until_unix=int(time.time() + started.retry_after_s),
                )
            raise Unauthenticated(LOGIN_FAILED)
        if account.disabled:
            raise Unauthenticated("this account is disabled; ask an administrator")
        used_mfa = await self._second_factor(account, request, key, source)
        self.lockouts.record_success(key)
        actor = f"user:{account.user_id}"
        if needs_rehash(account.password_hash):
            # The hashing parameters were raised since this password was set.
            new_hash = await hash_password(request.password)
            await self._user_event(account, PasswordChanged(user_id=account.user_id, password_hash=new_hash), actor)
        session_id = uuid.uuid4().hex
        refresh = new_refresh_token(session_id)
        event = NewEvent(
            aggregate_type="session",
            aggregate_id=session_id,
            payload=SessionStarted(
                session_id=session_id,
                user_id=account.user_id,
                refresh_token_sha256=digest(refresh),
                source=source,
                mfa=used_mfa,
            ),
            actor=actor,
        )
        await self._append(session_subject(session_id), event, version=1, expected_seq=0)
        await self._security(
            "login_succeeded", actor=actor, user_id=account.user_id, username=account.username, source=source
        )
        if not any(s.source == source for s in self.sessions.of_user(account.user_id) if s.session_id != session_id):
            await self._security(
                "new_session_source", actor=actor, user_id=account.user_id, username=account.username, source=source
            )
        return self._tokens(account, session_id, refresh, mfa=used_mfa)

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
        )

    async def _second_factor(self, account: Account, request: auth_pb2.LoginRequest, key: str, source: str) -> bool:
        """True when a TOTP or recovery code was used; refuses when one is enrolled and missing."""
        assert self._sealer is not None
        state = self.mfa.get(account.user_id)
        if state is None or not state.enrolled:
            return False
        if not request.totp_code and not request.recovery_code:
            raise Unauthenticated("this account uses two-factor authentication: give the TOTP code or a recovery code")
        actor = f"user:{account.user_id}"
        accepted: Message | None = None
        if request.totp_code:
            secret = self._sealer.open(state.secret, account.user_id)
            step = mfa.matching_step(secret, request.totp_code, time.time(), after_step=state.last_step)
            if step is not None:
                accepted = TotpCodeAccepted(user_id=account.user_id, time_step=step)
        elif (code := mfa.recovery_digest(request.recovery_code[:64])) in state.recovery:
            accepted = RecoveryCodeUsed(user_id=account.user_id, recovery_code_sha256=code)
        if accepted is not None:
            try:
                # Appended on the user's subject at the version we read: of two logins racing
                # with the same code, only one append succeeds.
                await self._user_event(account, accepted, actor)
                return True
            except FailedPrecondition:
                pass
        self.lockouts.record_failure(key, source)
        await self._security("mfa_failed", actor="service:auth", user_id=account.user_id, username=key, source=source)
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
        if account is None or account.disabled:
            raise Unauthenticated("this account is disabled; ask an administrator")
        if verdict is RefreshVerdict.REUSED:
            await self._revoke(session, "refresh token reuse", "service:auth")
            await self._security(
                "refresh_token_reuse",
                actor="service:auth",
                user_id=session.user_id,
                username=account.username,
                source=self._source(context),
                detail=session.session_id,
            )
            raise Unauthenticated("this refresh token was already used; the session is revoked, log in again")
        refresh = new_refresh_token(session.session_id)
        rotated = RefreshTokenRotated(
            session_id=session.session_id,
            user_id=session.user_id,
            previous_sha256=presented,
            refresh_token_sha256=digest(refresh),
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
        if not await verify_password(account.password_hash, request.current_password):
            raise Unauthenticated("the current password is wrong")
        check_password_policy(request.new_password, account.username)
        new_hash = await hash_password(request.new_password)
        actor = f"user:{caller.user_id}"
        await self._user_event(account, PasswordChanged(user_id=account.user_id, password_hash=new_hash), actor)
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
            caller.require(Permission.SESSIONS_READ_ANY)
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
            caller.require(Permission.SESSIONS_REVOKE_ANY)
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
        secret = self._sealer.open(state.pending_secret, account.user_id)
        step = mfa.matching_step(secret, request.totp_code, time.time(), after_step=state.last_step)
        if step is None:
            raise InvalidArgument("the code does not match; check the authenticator app's clock and try the next code")
        codes = mfa.new_recovery_codes()
        actor = f"user:{account.user_id}"
        enrolled = TotpEnrolled(user_id=account.user_id, recovery_code_sha256=[mfa.recovery_digest(c) for c in codes])
        await self._user_event(account, enrolled, actor)
        # The confirming code is spent too: it cannot be replayed at login.
        await self._user_event(account, TotpCodeAccepted(user_id=account.user_id, time_step=step), actor)
        await self._security("mfa_enrolled", actor=actor, user_id=account.user_id, username=account.username)
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
        await self._append(MFA_POLICY_SUBJECT, event, version=0, expected_seq=None)
        await self._security("mfa_policy_changed", actor=actor, detail=f"{role}: required={request.required}")
        return auth_pb2.SetMfaRequiredResponse()

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

    async def UploadOneTimeKeys(
        self, request: auth_pb2.UploadOneTimeKeysRequest, context: Context
    ) -> auth_pb2.UploadOneTimeKeysResponse:
        caller = self._caller(context)
        device_id = keys.validate_device_id(request.device_id)
        uploaded = [keys.StoredKey(k.key_id, k.key, k.signature) for k in request.keys]
        for _ in range(APPEND_ATTEMPTS):
            device = self.keys.get(caller.user_id, device_id)
            if device is None:
                raise NotFound("no such device of yours; publish its identity keys first")
            device.check_upload(uploaded)
            payload = OneTimeKeysUploaded(
                user_id=caller.user_id,
                device_id=device_id,
                keys=[UploadedOneTimeKey(key_id=k.key_id, key=k.key, signature=k.signature) for k in uploaded],
            )
            event = self._device_event(caller.user_id, device_id, payload, f"user:{caller.user_id}")
            try:
                await self._append(
                    device_subject(caller.user_id, device_id),
                    event,
                    version=device.version + 1,
                    expected_seq=device.last_seq,
                )
            except FailedPrecondition:
                await self._settle()
                continue
            return auth_pb2.UploadOneTimeKeysResponse(one_time_keys_left=len(device.unclaimed))
        raise FailedPrecondition("the device's keys are changing too fast; try again")

    async def ClaimOneTimeKey(
        self, request: auth_pb2.ClaimOneTimeKeyRequest, context: Context
    ) -> auth_pb2.ClaimedOneTimeKey:
        caller = self._caller(context)
        user_id = _id(request.user_id, "user_id")
        device_id = keys.validate_device_id(request.device_id)
        lock = self._device_locks.setdefault((user_id, device_id), asyncio.Lock())
        async with lock:
            for _ in range(APPEND_ATTEMPTS):
                device = self.keys.get(user_id, device_id)
                if device is None:
                    raise NotFound("no such device")
                chosen = device.next_key()
                if chosen is None:
                    raise FailedPrecondition("this device has no one-time keys left; its owner must upload more")
                claimed = OneTimeKeyClaimed(
                    user_id=user_id, device_id=device_id, key_id=chosen.key_id, claimed_by=caller.user_id
                )
                event = self._device_event(user_id, device_id, claimed, f"user:{caller.user_id}")
                try:
                    # At the subject sequence the choice was made from: a racing claim of the
                    # same key (from another instance) makes this append fail, never both land.
                    await self._append(
                        device_subject(user_id, device_id),
                        event,
                        version=device.version + 1,
                        expected_seq=device.last_seq,
                    )
                except FailedPrecondition:
                    await self._settle()
                    continue
                return auth_pb2.ClaimedOneTimeKey(
                    device=device_proto(device),
                    one_time_key=auth_pb2.OneTimeKey(key_id=chosen.key_id, key=chosen.key, signature=chosen.signature),
                )
        raise FailedPrecondition("the device's keys are changing too fast; try again")

    async def ListDevices(self, request: auth_pb2.ListDevicesRequest, context: Context) -> auth_pb2.ListDevicesResponse:
        caller = self._caller(context)
        user_id = request.user_id or caller.user_id
        self._account(user_id)
        return auth_pb2.ListDevicesResponse(devices=[device_proto(d) for d in self.keys.of_user(user_id)])
