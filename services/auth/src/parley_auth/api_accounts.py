"""Accounts: registration, invitations, creation by an administrator, roles, disabling,
unlocking, slowed addresses and erasure requests, protobuf in and out around domain.py's decisions."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid

from parley.auth.v1 import auth_pb2
from parley.auth.v1.events_pb2 import InviteCreated, InviteRedeemed, LoginFailuresCleared, SourceSlowdownLifted

from parley_auth import domain, facts
from parley_auth.accounts import Account
from parley_auth.audit_trail import MAX_NOT_MADE_DETAIL, REQUEST_SOURCE
from parley_auth.auth_state import InviteState
from parley_auth.domain import actor_of, checked_id
from parley_auth.password_policy import check_password_policy
from parley_auth.passwords import hash_password
from parley_auth.servicer_base import (
    INVITE_DEFAULT_HOURS,
    INVITE_MAX_HOURS,
    MAX_USERS_PER_LOOKUP,
    Context,
    account_proto,
    account_read,
    invite_subject,
    utc_text,
)
from parley_auth.step_up import StepUps
from parley_auth.usernames import USERNAME_UNAVAILABLE, check_name_claimable, normalize_username, username_key
from parley_core.actor import Actor
from parley_core.envelope import NewEvent
from parley_core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from parley_core.event_log import ANYWHERE, NEW, ChangedMeanwhile, Position
from parley_core.rbac import DEFAULT_ROLE, AccountAction
from parley_core.sources import MAX_SOURCE_LENGTH, budget_key, is_address
from parley_core.topology import (
    NODE_AGENT,
    erasure_request_subject,
    lockout_subject,
    slowed_source_subject,
    username_subject,
)


class AccountsApi(StepUps):
    """Accounts and what an administrator does to them."""

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

    async def _create(self, username: str, password_hash: str, role: str, actor: Actor | None, user_id: str) -> Account:
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
            actor=actor or Actor.user(user_id),
        )
        try:  # the name's subject must be empty: of two registrations of one name, one lands
            await self.events.append(username_subject(username_key(username)), [event], NEW)
        except ChangedMeanwhile:
            raise AlreadyExists(USERNAME_UNAVAILABLE) from None
        account = self.accounts.by_id(user_id)
        assert account is not None
        return account

    async def Register(self, request: auth_pb2.RegisterRequest, context: Context) -> auth_pb2.UserName:
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
            actor=Actor.user(user_id),
            user_id=user_id,
            username=username,
            detail=f"{mode} registration as {role}",
        ):
            if invite is not None:
                await self._redeem(*invite, user_id=user_id)
            account = await self._create(username, password_hash, role, None, user_id)
        return auth_pb2.UserName(user_id=account.user_id, username=account.username)

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
            actor=Actor.user(user_id),
        )
        try:
            await self.events.append(invite_subject(invite_hash), [redeemed], Position(1, invite.last_seq))
        except FailedPrecondition:
            raise PermissionDenied("this invitation was used at the same moment; ask for a new one") from None

    async def CreateInvite(self, request: auth_pb2.CreateInviteRequest, context: Context) -> auth_pb2.Invite:
        caller = self._caller_or_platform(context)
        role = domain.check_may_grant(caller, request.role, what="invite a")
        hours = request.valid_hours or INVITE_DEFAULT_HOURS
        if not 1 <= hours <= INVITE_MAX_HOURS:
            raise InvalidArgument(f"valid_hours must be 1-{INVITE_MAX_HOURS}")
        # Hex, 192 bits: a person passes it as a command-line argument (`parley register NAME
        # --invite CODE`), where a URL-safe code starting with "-" would read as an option.
        code = secrets.token_hex(24)
        invite_hash = hashlib.sha256(code.encode()).digest()
        expires = int(time.time()) + hours * 3600
        actor = actor_of(caller)
        event = NewEvent(
            aggregate_type="invite",
            aggregate_id=invite_hash.hex(),
            payload=InviteCreated(invite_sha256=invite_hash, role=role, created_by=str(actor), expires_at_unix=expires),
            actor=actor,
        )
        async with self.audit.recorded("invite_created", actor=actor, detail=f"role {role}, valid {hours} h"):
            await self.events.append(invite_subject(invite_hash), [event], NEW)
        return auth_pb2.Invite(invite_code=code, role=role, expires_at_unix=expires)

    async def CreateUser(self, request: auth_pb2.CreateUserRequest, context: Context) -> auth_pb2.Account:
        if self._node_agent_alone(context):
            return await self._create_prober(request)
        caller = self._caller_or_platform(context)
        role = domain.check_may_grant(caller, request.role, what="create a user with role")
        return await self._create_user(request, role, actor_of(caller), by_platform=caller is None)

    async def _create_prober(self, request: auth_pb2.CreateUserRequest) -> auth_pb2.Account:
        """A joined host's agent makes its prober's account and no other (rbac.NODE_AGENT_METHODS),
        up to the settings' number of probers: checked and made one at a time at this instance."""
        async with self._prober_turn:
            name, most = normalize_username(request.username), self.settings.node_agent_probers_max
            role = domain.check_prober_account(self.accounts, name, request.role, most=most)
            return await self._create_user(request, role, Actor.service(NODE_AGENT), by_platform=True)

    async def _create_user(
        self, request: auth_pb2.CreateUserRequest, role: str, actor: Actor, *, by_platform: bool
    ) -> auth_pb2.Account:
        username, password_hash = await self._claimable(
            request.username, request.password, self_service=False, by_platform=by_platform
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
        read = account_read(account)
        events, _ = domain.decide_assign_role(account, caller, request.role)
        for assigned in events:
            assert isinstance(assigned, facts.RoleAssigned)
            actor, detail = actor_of(caller), f"{assigned.previous_role} -> {assigned.role}"
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
        kind, read = "account_disabled" if request.disabled else "account_enabled", account_read(account)
        async with self.audit.recorded(
            kind, actor=actor, user_id=account.user_id, username=account.username, detail=request.reason
        ):
            await self._user_events(account, events, actor, read=read)
        return account_proto(account)

    async def UnlockAccount(self, request: auth_pb2.AccountActionRequest, context: Context) -> auth_pb2.Account:
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
            await self.events.append(lockout_subject(username_key(key)), [cleared], ANYWHERE)
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
        self, request: auth_pb2.AccountActionRequest, context: Context
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
            await self.events.append(erasure_request_subject(user_id), [event], NEW)
        return auth_pb2.RequestErasureResponse()
