"""Each service's own view of who may do what: roles, disabled and erased accounts, revoked sessions.

Fed from the AUTH stream (UserRegistered, RoleAssigned, AccountDisabled/Enabled,
SessionRevoked, AccountErased), never by a call to auth, so every service refuses a revoked
session, a disabled or erased account or a withdrawn permission on the next call, even when
auth is down.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from google.protobuf.message import Message
from parley.auth.v1.events_pb2 import (
    AccountDisabled,
    AccountEnabled,
    AccountErased,
    AccountErasureRequested,
    MfaRequirementSet,
    RoleAssigned,
    SessionRevoked,
    SessionStepUpRequired,
    UserRegistered,
)

from parley_core.bus import EventBus, ReceivedEvent, Replay
from parley_core.envelope import open_payload

AUTH_FILTER = "parley.auth.>"
# Events after which a caller allowed a moment ago may be refused now.
_MAY_WITHDRAW_ACCESS = (
    RoleAssigned,
    AccountDisabled,
    SessionRevoked,
    AccountErased,
    MfaRequirementSet,
    SessionStepUpRequired,
)


@dataclass
class UserAccess:
    role: str
    disabled: bool = False
    # Stream sequence of the newest role change, so out-of-order sources never regress it.
    role_seq: int = 0


@dataclass
class AccessProjection:
    users: dict[str, UserAccess] = field(default_factory=dict)
    revoked_sessions: set[str] = field(default_factory=set)
    # Sessions the anomaly detector put under a step-up: limited as a login owing its second factor.
    step_up_sessions: set[str] = field(default_factory=set)
    # Erased accounts: a token issued before the erasure must not outlive it (it names no one now).
    erased_users: set[str] = field(default_factory=set)
    # Accounts whose erasure was requested through auth (the one authority for it): the owners act
    # on storage's erasure facts for these only.
    erasure_requests: set[str] = field(default_factory=set)
    mfa_required_roles: set[str] = field(default_factory=set)
    last_seq: int = 0
    # Counts every event applied: a caller's standing computed at one count holds until the next
    # (parley_core.tokens remembers it that long).
    changes: int = 0
    # Wall-clock seconds between an access event's occurred_at and its application here, for
    # the propagation figure the tests report.
    last_delay_s: float = 0.0
    _waiters: list[asyncio.Future[None]] = field(default_factory=list, repr=False)

    def apply_payload(self, payload: Message, stream_seq: int) -> None:
        if isinstance(payload, UserRegistered):
            self._user(payload.user_id, payload.role or "member", stream_seq)
        elif isinstance(payload, RoleAssigned):
            user = self._user(payload.user_id, payload.role, stream_seq)
            if stream_seq >= user.role_seq:
                user.role, user.role_seq = payload.role, stream_seq
        elif isinstance(payload, AccountDisabled):
            self._user(payload.user_id, "member", stream_seq).disabled = True
        elif isinstance(payload, AccountEnabled):
            self._user(payload.user_id, "member", stream_seq).disabled = False
        elif isinstance(payload, SessionRevoked):
            self.revoked_sessions.add(payload.session_id)
            self.step_up_sessions.discard(payload.session_id)
        elif isinstance(payload, SessionStepUpRequired):
            self.step_up_sessions.add(payload.session_id)
        elif isinstance(payload, AccountErasureRequested):
            self.erasure_requests.add(payload.user_id)
        elif isinstance(payload, AccountErased):
            self.erased_users.add(payload.user_id)
            self.users.pop(payload.user_id, None)
        elif isinstance(payload, MfaRequirementSet):
            if payload.required:
                self.mfa_required_roles.add(payload.role)
            else:
                self.mfa_required_roles.discard(payload.role)
        self.last_seq = max(self.last_seq, stream_seq)
        self.changes += 1

    def _user(self, user_id: str, role: str, stream_seq: int) -> UserAccess:
        user = self.users.get(user_id)
        if user is None:
            user = self.users[user_id] = UserAccess(role=role, role_seq=stream_seq)
        return user

    async def apply(self, event: ReceivedEvent) -> None:
        payload = open_payload(event.envelope)
        self.apply_payload(payload, event.stream_seq)
        occurred = event.envelope.occurred_at.ToNanoseconds()
        if occurred:
            self.last_delay_s = max(0.0, time.time() - occurred / 1e9)
        if not isinstance(payload, _MAY_WITHDRAW_ACCESS):
            return  # a registration, a login...: nobody lost anything
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def changed(self) -> None:
        """Returns after the next event that may withdraw someone's access is applied:
        long-lived calls (live streams) re-check their caller then, not only when they started."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    def role_of(self, user_id: str) -> str | None:
        user = self.users.get(user_id)
        return user.role if user else None

    def is_erased(self, user_id: str) -> bool:
        return user_id in self.erased_users

    def is_disabled(self, user_id: str) -> bool:
        user = self.users.get(user_id)
        return bool(user and user.disabled)

    def mfa_required(self, role: str) -> bool:
        return role in self.mfa_required_roles

    def is_revoked(self, session_id: str) -> bool:
        return session_id in self.revoked_sessions

    def step_up_required(self, session_id: str) -> bool:
        return session_id in self.step_up_sessions


def follow_access(bus: EventBus, access: AccessProjection) -> Replay:
    """Added to the process's one replay of AUTH (EventBus.follow)."""
    return bus.follow(stream="AUTH", filter_subject=AUTH_FILTER, handler=access.apply)
