"""What every part of auth's servicer shares: the state it reads (projection.py), the audit trail,
the event log, who is calling, and the appends of a decision's facts. The RPCs are grouped by
concern in the api_*.py modules; service.py composes them."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.message import Message
from parley.auth.v1 import auth_pb2

from parley_auth import codec, domain, facts, keys, mfa
from parley_auth.accounts import Account
from parley_auth.audit_key import AuditSigner
from parley_auth.audit_trail import REQUEST_SOURCE, AuditTrail
from parley_auth.check_gates import CheckGates
from parley_auth.domain import checked_id
from parley_auth.lockout import LockoutBook
from parley_auth.projection import AuthProjection
from parley_auth.sealing import RECOVERY_CODES, SecretSealer
from parley_auth.sessions import Session
from parley_auth.settings import AuthSettings
from parley_auth.signing_key_job import SigningKeyJob
from parley_core.actor import Actor
from parley_core.bus import DurableConsumer, ReceivedEvent, Replay
from parley_core.envelope import NewEvent
from parley_core.errors import NotFound
from parley_core.event_log import EventLog, Position
from parley_core.rate import TokenBuckets
from parley_core.rbac import AccountAction
from parley_core.run_context import RunContext
from parley_core.same_named import same_named
from parley_core.server_interceptors import peer_names
from parley_core.sources import MAX_SOURCE_LENGTH, SOURCE_METADATA, client_address
from parley_core.tokens import Caller, bearer_token
from parley_core.topology import NODE_AGENT, PLATFORM_USER, stream_subject, user_subject

MAX_USERS_PER_DEVICE_LIST = 100
MAX_USERS_PER_LOOKUP = 200  # a screenful of people; ids are random, so this is no enumeration
MFA_POLICY_SUBJECT = stream_subject("auth", "policy", "mfa")
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
        **same_named(device, *keys.DEVICE_FIELDS),
        one_time_keys_left=len(device.unclaimed),
        has_fallback_key=device.fallback is not None,
    )


LOGIN_FAILED = "username or password is wrong"
REFRESH_INVALID = "refresh token is invalid or expired; log in again"

Context = grpc.aio.ServicerContext[Any, Any]


def utc_text(unix: float) -> str:
    """A time as audit records state it: read by people (`audit query`), so not epoch seconds."""
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def session_subject(session_id: str) -> str:
    return stream_subject("auth", "session", session_id)


def account_read(account: Account) -> tuple[int, int]:
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


class AuthBase:
    """The state and helpers every group of RPCs uses; `start` (service.py) wires them up."""

    def __init__(self, settings: AuthSettings | None = None) -> None:
        self.settings = settings or AuthSettings()
        self.projection = AuthProjection(
            lockouts=LockoutBook(
                pair_policy=self.settings.lockout_policy(per_source=False),
                source_policy=self.settings.lockout_policy(per_source=True),
                account_policy=self.settings.account_backstop_policy(),
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
        self.check_gates = CheckGates()  # one password or code check at a time per account
        self.signing = SigningKeyJob(
            p.signing_keys,
            rotation_s=self.settings.signing_key_rotation_seconds,
            token_lifetime_s=self.settings.access_token_seconds,
        )
        per_hour = self.settings.registrations_per_source_per_hour
        self.registrations = TokenBuckets(rate=per_hour / 3600, burst=per_hour)
        # A node agent's prober accounts are made one at a time here, so their cap holds.
        self._prober_turn = asyncio.Lock()
        self._sealer: SecretSealer | None = None
        self._audit_signer: AuditSigner | None = None
        self._ctx: RunContext | None = None
        self._replay: Replay | None = None
        self._due: DurableConsumer | None = None
        self._audit_trail: AuditTrail | None = None
        self._events: EventLog | None = None

    @property
    def ctx(self) -> RunContext:
        assert self._ctx is not None
        return self._ctx

    @property
    def events(self) -> EventLog:
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

    async def _apply(self, event: ReceivedEvent) -> None:
        """The replay's handler: the projection applies the event; the signing-key job sees it."""
        self.signing.saw(self.projection.apply_received(event))

    # -- sealed secrets (parley_auth.sealing): every service reads AUTH, only auth opens them ----

    def _seal(self, value: bytes, field: str, owner: str) -> bytes:
        assert self._sealer is not None
        return self._sealer.seal_field(value, field=field, owner=owner)

    def _sealed_recovery_codes(self, codes: list[str], user_id: str) -> bytes:
        return self._seal(b"".join(mfa.recovery_digest(c) for c in codes), RECOVERY_CODES, user_id)

    # -- writing ----------------------------------------------------------------------------

    async def _user_event(
        self, account: Account, payload: Message, actor: Actor, *, read: tuple[int, int] | None = None
    ) -> None:
        """Appended at the account's version and sequence as they were when the change was
        decided (`read`, from `_read`: taken before the audit record is written, which yields to
        other calls), so a change that raced it refuses this one; by default as they are now."""
        version, seq = read or account_read(account)
        event = NewEvent(aggregate_type="user", aggregate_id=account.user_id, payload=payload, actor=actor)
        at, changed = Position(version, seq), "the account changed at the same time; try again"
        await self.events.append(user_subject(account.user_id), [event], at, conflict=changed)

    async def _user_events(
        self, account: Account, events: list[facts.Event], actor: Actor, *, read: tuple[int, int] | None = None
    ) -> None:
        """A decision's facts about the account, appended in order (the first at `read`)."""
        for event in events:
            await self._user_event(account, self._encode(event), actor, read=read)
            read = None

    def _encode(self, event: facts.Event) -> Message:
        return codec.payload(event, self._seal)

    async def _session_event(self, session: Session, payload: Message, actor: Actor) -> None:
        event = NewEvent(aggregate_type="session", aggregate_id=session.session_id, payload=payload, actor=actor)
        await self.events.append(
            session_subject(session.session_id), [event], Position(session.version, session.last_seq)
        )

    def _unknown_name(self, typed: str) -> str:
        assert self._sealer is not None
        return self._sealer.unknown_name(typed)

    async def _revoke(self, session: Session, reason: str, actor: Actor) -> None:
        for revoked in domain.revocation(session, reason):
            detail = f"{session.session_id}: {reason}"
            async with self.audit.recorded("session_revoked", actor=actor, user_id=session.user_id, detail=detail):
                await self._session_event(session, self._encode(revoked), actor)

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

    def _node_agent_alone(self, context: Context) -> bool:
        """A joined host's node agent calling with its certificate and no user token."""
        return bearer_token(context) is None and NODE_AGENT in peer_names(context)

    def _caller(self, context: Context) -> Caller:
        REQUEST_SOURCE.set(self._source(context))
        return self.ctx.tokens.caller(context)

    def _administered(
        self, context: Context, user_id: str, reason: str, action: AccountAction
    ) -> tuple[Account, Actor]:
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
