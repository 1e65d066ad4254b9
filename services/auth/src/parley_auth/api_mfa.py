"""Two-factor authentication: TOTP enrolment, the per-role requirement, resets by an
administrator and recovery codes."""

from __future__ import annotations

from parley.auth.v1 import auth_pb2
from parley.auth.v1.events_pb2 import MfaRequirementSet, RecoveryCodesRegenerated, TotpCodeAccepted, TotpEnrolled

from parley_auth import domain, mfa
from parley_auth.domain import actor_of, validate_role
from parley_auth.password_policy import MAX_PASSWORD_LENGTH
from parley_auth.servicer_base import MFA_POLICY_SUBJECT, Context, account_proto, account_read
from parley_auth.step_up import StepUps
from parley_core.actor import Actor
from parley_core.envelope import NewEvent
from parley_core.errors import FailedPrecondition, InvalidArgument
from parley_core.event_log import ANYWHERE


class MfaApi(StepUps):
    """TOTP, recovery codes and the per-role requirement."""

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
        await self._user_events(account, events, Actor.user(account.user_id))
        return auth_pb2.BeginTotpEnrolmentResponse(
            otpauth_uri=mfa.provisioning_uri(secret, account.username), secret_base32=mfa.secret_base32(secret)
        )

    async def ConfirmTotpEnrolment(
        self, request: auth_pb2.ConfirmTotpEnrolmentRequest, context: Context
    ) -> auth_pb2.RecoveryCodes:
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
        actor = Actor.user(account.user_id)
        enrolled = TotpEnrolled(
            user_id=account.user_id, sealed_recovery_codes=self._sealed_recovery_codes(codes, account.user_id)
        )
        read = account_read(account)
        async with self.audit.recorded("mfa_enrolled", actor=actor, user_id=account.user_id, username=account.username):
            await self._user_event(account, enrolled, actor, read=read)
            # The confirming code is spent too: it cannot be replayed at login.
            await self._user_event(account, TotpCodeAccepted(user_id=account.user_id, time_step=step), actor)
        return auth_pb2.RecoveryCodes(recovery_codes=codes)

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
            await self.events.append(MFA_POLICY_SUBJECT, [event], ANYWHERE)
        return auth_pb2.SetMfaRequiredResponse()

    async def ResetMfa(self, request: auth_pb2.AccountActionRequest, context: Context) -> auth_pb2.Account:
        """Removes a user's TOTP and recovery codes (a lost or stolen phone) and revokes every
        session of that user: whoever holds a session may be the one holding the phone, so the
        user logs in again with the password alone and enrols a new authenticator."""
        caller = self._caller_or_platform(context)
        account = self._account(request.user_id)
        events, actor = domain.decide_reset_mfa(account, caller, self.mfa.get(account.user_id), request.reason)
        read = account_read(account)
        async with self.audit.recorded(
            "mfa_reset", actor=actor, user_id=account.user_id, username=account.username, detail=request.reason
        ):
            await self._user_events(account, events, actor, read=read)
        for session in domain.sessions_to_end(self.sessions.of_user(account.user_id)):
            await self._revoke(session, "two-factor authentication reset", actor)
        return account_proto(account)

    async def RegenerateRecoveryCodes(
        self, request: auth_pb2.RegenerateRecoveryCodesRequest, context: Context
    ) -> auth_pb2.RecoveryCodes:
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
        actor = Actor.user(account.user_id)
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
            await self._password_step_up(
                context,
                caller,
                account,
                request.password,
                call="RegenerateRecoveryCodes",
                wrong="the password is wrong",
            )
        else:
            raise InvalidArgument("give a current TOTP code (totp_code) or your password (password)")
        codes = mfa.new_recovery_codes()
        regenerated = RecoveryCodesRegenerated(
            user_id=account.user_id, sealed_recovery_codes=self._sealed_recovery_codes(codes, account.user_id)
        )
        read = account_read(account)
        async with self.audit.recorded(
            "recovery_codes_regenerated", actor=actor, user_id=account.user_id, username=account.username
        ):
            await self._user_event(account, regenerated, actor, read=read)
        return auth_pb2.RecoveryCodes(recovery_codes=codes)
