"""Failed authentication, one lockout for logins and step-up checks (parley_auth.lockout): a
re-authentication inside a session is under the login's lockout, so a stolen session buys no
free guesses."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable

from parley.auth.v1.events_pb2 import LoginFailureCounted, LoginFailuresCleared

from parley_auth import mfa
from parley_auth.accounts import Account
from parley_auth.lockout import Scope
from parley_auth.passwords import verify_password
from parley_auth.servicer_base import AuthBase, Context
from parley_auth.usernames import username_key
from parley_core.actor import Actor
from parley_core.envelope import NewEvent
from parley_core.errors import ResourceExhausted, Unauthenticated
from parley_core.event_log import ANYWHERE
from parley_core.sources import budget_key
from parley_core.tokens import Caller
from parley_core.topology import lockout_subject

AUTH = Actor.service("auth")  # the lockout's own counting


class StepUps(AuthBase):
    """Wrong secrets counted, lockouts refused, re-authentication proven."""

    @staticmethod
    def _lockout_event(payload: LoginFailureCounted | LoginFailuresCleared) -> NewEvent:
        return NewEvent(
            aggregate_type="lockout",
            aggregate_id=username_key(payload.account_key),
            payload=payload,
            actor=AUTH,
        )

    # -- failed authentication: one lockout for logins and step-up checks (parley_auth.lockout) --

    def _refuse_while_locked(self, key: str, source: str) -> None:
        """Before a password or code is even checked: the pair's or the address's lockout."""
        if (locked := self.lockouts.check(key, budget_key(source))) is not None:
            raise ResourceExhausted(locked.message)

    async def _failed(
        self, kind: str, *, key: str, source: str, user_id: str, actor: Actor = AUTH, detail: str = ""
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
            where = {
                Scope.PAIR: "this account from this address",
                Scope.ACCOUNT: "this account from every address",
            }.get(locked.scope, "this address")
            recorded = self.audit.recorded(
                "lockout",
                actor=AUTH,
                user_id=user_id,
                username=key,
                source=source,
                detail=f"{where} locked for {locked.retry_after_s:.0f} s",
                locked_until_unix=int(time.time() + locked.retry_after_s),
            )
        async with recorded:
            await self.events.append(lockout_subject(username_key(key)), [counted], ANYWHERE)

    async def _succeeded(self, key: str, source: str) -> None:
        """The right secret from this address: its pair's count starts again (no other one's)."""
        if self.lockouts.has_failures(key, budget_key(source)):
            cleared = self._lockout_event(LoginFailuresCleared(account_key=key, source=source))
            await self.events.append(lockout_subject(username_key(key)), [cleared], ANYWHERE)

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
        async with self.check_gates.one_at_a_time(account.username):  # counted before the next check
            self._refuse_while_locked(account.username, source)
            if not await proven():
                await self._failed(
                    "step_up_failed",
                    key=account.username,
                    source=source,
                    user_id=account.user_id,
                    actor=Actor.user(caller.user_id),
                    detail=f"{call}: {wrong} (session {caller.session_id})",
                )
                raise Unauthenticated(wrong)
            await self._succeeded(account.username, source)

    async def _password_step_up(
        self, context: Context, caller: Caller, account: Account, password: str, *, call: str, wrong: str
    ) -> None:
        """A step-up by the account's current password."""
        await self._step_up(
            context,
            caller,
            account,
            call=call,
            wrong=wrong,
            proven=lambda: verify_password(account.password_hash, password),
        )

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
        step = mfa.matching_step(secret, code, time.time(), after_step=after_step)  # told only if not locked

        async def code_matches() -> bool:
            return step is not None

        await self._step_up(context, caller, account, call=call, wrong=wrong, proven=code_matches)
        assert step is not None
        return step
