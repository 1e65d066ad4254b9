"""Auth's projection of accounts, MFA, invitations, failed logins and slowed addresses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message
from parley.auth.v1.events_pb2 import (
    AccountDisabled,
    AccountEnabled,
    AccountErased,
    AccountErasureRequested,
    InviteCreated,
    InviteRedeemed,
    LoginFailureCounted,
    LoginFailuresCleared,
    MfaRequirementSet,
    PasswordChanged,
    RecoveryCodesRegenerated,
    RecoveryCodeUsed,
    RoleAssigned,
    SourceSlowdownLifted,
    SourceSlowed,
    TotpCodeAccepted,
    TotpEnrolled,
    TotpEnrolmentStarted,
    TotpReset,
    UserRegistered,
)

from parley_auth import mfa
from parley_auth.accounts import Account
from parley_auth.applying import Recorded, applier_table
from parley_auth.auth_state import AuthState, InviteState
from parley_auth.sealing import (
    RECOVERY_CODE,
)
from parley_auth.usernames import username_key
from parley_core.sources import budget_key

APPLIERS, applies = applier_table()


# -- accounts ------------------------------------------------------------------------------------


@applies(UserRegistered)
def _registered(p: AuthState, event: UserRegistered, at: Recorded) -> None:
    password_hash = p._password_hash(event.sealed_password_hash, event.password_hash, event.user_id)
    p.accounts.add(Account(event.user_id, event.username, password_hash, event.role))
    p.username_holders[username_key(event.username)] = event.user_id


@applies(AccountErasureRequested)
def _erasure_requested(p: AuthState, event: AccountErasureRequested, at: Recorded) -> None:
    p.erasure_requests.add(event.user_id)


@applies(AccountErased)
def _erased(p: AuthState, event: AccountErased, at: Recorded) -> None:
    # Its events are being deleted from the stream; its name stays taken (see AccountErased).
    p.accounts.forget(event.user_id)
    p.erasure_markers.add(at.event_id)
    p.erased_users.add(event.user_id)
    p.subject_versions.erased(event.user_id)


UserApplier = Callable[[AuthState, Account, mfa.MfaState, Any], None]


def _on_user(*types: type[Message]) -> Callable[[UserApplier], UserApplier]:
    """An event on an account's own subject: counted on its version (for optimistic appends),
    then applied to the account and its MFA state. One for an erased account is dropped."""

    def register(applier: UserApplier) -> UserApplier:
        def apply(p: AuthState, event: Any, at: Recorded) -> None:
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
def _role(p: AuthState, account: Account, state: mfa.MfaState, event: RoleAssigned) -> None:
    account.role = event.role


@_on_user(AccountDisabled)
def _disabled(p: AuthState, account: Account, state: mfa.MfaState, event: AccountDisabled) -> None:
    account.disabled = True


@_on_user(AccountEnabled)
def _enabled(p: AuthState, account: Account, state: mfa.MfaState, event: AccountEnabled) -> None:
    account.disabled = False


@_on_user(PasswordChanged)
def _password(p: AuthState, account: Account, state: mfa.MfaState, event: PasswordChanged) -> None:
    account.password_hash = p._password_hash(event.sealed_password_hash, event.password_hash, account.user_id)


@_on_user(TotpEnrolmentStarted)
def _totp_started(p: AuthState, account: Account, state: mfa.MfaState, event: TotpEnrolmentStarted) -> None:
    state.pending_secret = event.sealed_secret


@_on_user(TotpEnrolled)
def _totp_enrolled(p: AuthState, account: Account, state: mfa.MfaState, event: TotpEnrolled) -> None:
    state.secret, state.pending_secret = state.pending_secret, b""
    state.recovery = p._recovery_set(event, account.user_id)


@_on_user(TotpCodeAccepted)
def _code_accepted(p: AuthState, account: Account, state: mfa.MfaState, event: TotpCodeAccepted) -> None:
    state.last_step = max(state.last_step, event.time_step)


@_on_user(RecoveryCodeUsed)
def _recovery_used(p: AuthState, account: Account, state: mfa.MfaState, event: RecoveryCodeUsed) -> None:
    used = event.recovery_code_sha256
    if event.sealed_recovery_code_sha256:
        used = p.unsealed(event.sealed_recovery_code_sha256, b"", RECOVERY_CODE, account.user_id)
    state.recovery.discard(used)


@_on_user(TotpReset)
def _totp_reset(p: AuthState, account: Account, state: mfa.MfaState, event: TotpReset) -> None:
    # Single use is per secret: the next enrolment's secret starts its own count.
    p.mfa[account.user_id] = mfa.MfaState()


@_on_user(RecoveryCodesRegenerated)
def _recovery_regenerated(p: AuthState, account: Account, state: mfa.MfaState, event: RecoveryCodesRegenerated) -> None:
    state.recovery = p._recovery_set(event, account.user_id)


@applies(MfaRequirementSet)
def _mfa_policy(p: AuthState, event: MfaRequirementSet, at: Recorded) -> None:
    if event.required:
        p.mfa_required_roles.add(event.role)
    else:
        p.mfa_required_roles.discard(event.role)


# -- invitations -------------------------------------------------------------------------------


@applies(InviteCreated)
def _invite_created(p: AuthState, event: InviteCreated, at: Recorded) -> None:
    p.invites[event.invite_sha256] = InviteState(event.role, event.expires_at_unix, last_seq=at.stream_seq)


@applies(InviteRedeemed)
def _invite_redeemed(p: AuthState, event: InviteRedeemed, at: Recorded) -> None:
    if (invite := p.invites.get(event.invite_sha256)) is not None:
        invite.redeemed, invite.last_seq = True, at.stream_seq


# -- failed logins and slowed addresses (lockout.py) -----------------------------------------------


@applies(LoginFailureCounted)
def _failure(p: AuthState, event: LoginFailureCounted, at: Recorded) -> None:
    p.lockouts.record_failure(event.account_key, budget_key(event.source), at=at.at)


@applies(LoginFailuresCleared)
def _failures_cleared(p: AuthState, event: LoginFailuresCleared, at: Recorded) -> None:
    p.lockouts.record_success(event.account_key, budget_key(event.source) if event.source else "")


@applies(SourceSlowed)
def _slowed(p: AuthState, event: SourceSlowed, at: Recorded) -> None:
    p.lockouts.slow(budget_key(event.source), event.until_unix)


@applies(SourceSlowdownLifted)
def _slowdown_lifted(p: AuthState, event: SourceSlowdownLifted, at: Recorded) -> None:
    p.lockouts.lift(budget_key(event.source), event.lifted_until)
