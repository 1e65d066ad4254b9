"""Logins and sessions: password and second factor, refresh-token rotation with reuse detection,
logout, password change, listing and revoking sessions."""

from __future__ import annotations

import time
import uuid

from google.protobuf.message import Message
from parley.auth.v1 import auth_pb2
from parley.auth.v1.events_pb2 import RecoveryCodeUsed, RefreshTokenRotated, SessionStarted, TotpCodeAccepted

from parley_auth import domain, facts, mfa
from parley_auth.accounts import Account
from parley_auth.audit_trail import REQUEST_SOURCE
from parley_auth.domain import LoginVerdict, checked_id
from parley_auth.password_policy import check_current_password_given, check_password_policy
from parley_auth.passwords import hash_password, needs_rehash, verify_password
from parley_auth.sealing import RECOVERY_CODE, REFRESH_TOKEN
from parley_auth.servicer_base import (
    LOGIN_FAILED,
    REFRESH_INVALID,
    Context,
    account_read,
    session_proto,
    session_subject,
)
from parley_auth.sessions import REFRESH_TOKEN_LIFETIME_S, RefreshVerdict, digest, new_refresh_token, session_id_of
from parley_auth.step_up import StepUps
from parley_auth.usernames import normalize_username
from parley_core.actor import Actor
from parley_core.envelope import NewEvent
from parley_core.errors import FailedPrecondition, InvalidArgument, Unauthenticated
from parley_core.event_log import NEW
from parley_core.rbac import Permission


class SessionsApi(StepUps):
    """Logins, refreshes and sessions."""

    async def Login(self, request: auth_pb2.LoginRequest, context: Context) -> auth_pb2.LoginResponse:
        REQUEST_SOURCE.set(self._source(context))
        domain.check_login_input(request.username, request.password)
        source = self._source(context)
        try:
            username = normalize_username(request.username)
        except InvalidArgument:
            username = ""
        # One check at a time per account: each failure is counted before the next check runs.
        async with self.check_gates.one_at_a_time(username or request.username.casefold()):
            return await self._login(request, username, source)

    async def _login(self, request: auth_pb2.LoginRequest, username: str, source: str) -> auth_pb2.LoginResponse:
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
        actor = Actor.user(account.user_id)
        session_id = uuid.uuid4().hex
        refresh = new_refresh_token(session_id)
        new_source = not any(s.source == source for s in self.sessions.of_user(account.user_id))
        read = account_read(account)
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
            await self.events.append(session_subject(session_id), [event], NEW)
        return self._tokens(account, session_id, refresh, mfa=used_mfa)

    async def _set_password(self, account: Account, password_hash: str, actor: Actor, read: tuple[int, int]) -> None:
        events, _ = domain.decide_change_password(account, password_hash)
        await self._user_events(account, events, actor, read=read)

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
        actor = Actor.user(account.user_id)
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
                actor=Actor.service("auth"),
                user_id=session.user_id,
                username=account.username,
                source=self._source(context),
                detail=session.session_id,
            )
            await self._revoke(session, "refresh token reuse", Actor.service("auth"))
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
            await self._session_event(session, rotated, Actor.user(session.user_id))
        except FailedPrecondition:
            # Another refresh with the same token won the race: that is reuse too.
            raise Unauthenticated("this refresh token was already used; log in again") from None
        return self._tokens(account, session.session_id, refresh, mfa=session.mfa)

    async def Logout(self, request: auth_pb2.LogoutRequest, context: Context) -> auth_pb2.LogoutResponse:
        caller = self._caller(context)
        session = self.sessions.get(caller.session_id)
        if session is not None:
            await self._revoke(session, "logout", Actor.user(caller.user_id))
        return auth_pb2.LogoutResponse()

    async def ChangePassword(
        self, request: auth_pb2.ChangePasswordRequest, context: Context
    ) -> auth_pb2.ChangePasswordResponse:
        caller = self._caller(context)
        account = self._account(caller.user_id)
        check_current_password_given(request.current_password)
        await self._password_step_up(
            context,
            caller,
            account,
            request.current_password,
            call="ChangePassword",
            wrong="the current password is wrong",
        )
        check_password_policy(request.new_password, account.username)
        read = account_read(account)  # the password checked was this version's
        new_hash = await hash_password(request.new_password)
        actor = Actor.user(caller.user_id)
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
            assert isinstance(revoked, facts.SessionRevoked)
            await self._revoke(session, revoked.reason, Actor.user(caller.user_id))
        return auth_pb2.RevokeSessionResponse()
