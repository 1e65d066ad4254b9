"""Auth's decisions: pure functions of the state read and a command, returning the facts to
append (facts.py; codec.py writes them as AUTH events) and a result. The rules they lean on live
beside them: usernames.py, password_policy.py, accounts.py. Free of protobuf, gRPC, NATS and I/O."""

from __future__ import annotations

from enum import Enum
from typing import Protocol, TypeVar

from parley_auth.accounts import Account, AccountDirectory
from parley_auth.facts import (
    Disabled,
    Enabled,
    ErasureRequested,
    Event,
    PasswordChanged,
    Registered,
    RoleAssigned,
    SessionRevoked,
    TotpEnrolmentStarted,
    TotpReset,
)
from parley_auth.mfa import MfaState
from parley_auth.password_policy import MAX_PASSWORD_LENGTH
from parley_auth.sessions import Session
from parley_auth.usernames import USERNAME_UNAVAILABLE, is_reserved
from parley_core.actor import Actor
from parley_core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from parley_core.rbac import (
    ACCOUNT_ACTION_PERMISSIONS,
    DEFAULT_ROLE,
    ROLES,
    AccountAction,
    Permission,
    may_act_on_account,
    may_assign,
)
from parley_core.synthetic import PROBER_NAME_PREFIX, is_host_prober_name

MAX_ID_LENGTH = 64
MAX_REASON_LENGTH = 500
T = TypeVar("T")


def validate_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidArgument(f"role must be one of: {', '.join(ROLES)}")
    return role


class Acting(Protocol):
    """Who asks (parley_core.tokens.Caller fits); None where a decision takes one means the
    platform identity (operator tooling), which passes every check."""

    @property
    def user_id(self) -> str: ...

    @property
    def role(self) -> str: ...

    def require(self, permission: Permission, *, what: str = ...) -> None: ...


def actor_of(by: Acting | None) -> Actor:
    return Actor.user(by.user_id) if by is not None else Actor.PLATFORM


def checked_id(value: str, what: str) -> str:
    if not value or len(value) > MAX_ID_LENGTH or not value.isalnum():
        raise InvalidArgument(f"{what} is required: up to {MAX_ID_LENGTH} letters and digits")
    return value


def check_reason(reason: str) -> str:
    if len(reason) > MAX_REASON_LENGTH:
        raise InvalidArgument(f"reason must be at most {MAX_REASON_LENGTH} characters")
    return reason


def check_account_action(by: Acting | None, action: AccountAction, target: Account | None) -> None:
    """rbac's one rule for acting on another account, worded for the caller; the platform
    identity (None) is the operator's and passes. A target account erased since is no owner."""
    if by is None:
        return
    by.require(ACCOUNT_ACTION_PERMISSIONS[action], what=f"a request to {action} another user")
    target_role = target.role if target is not None else ""
    if not may_act_on_account(by.role, action, target_role=target_role):
        raise PermissionDenied(f"only an owner may {action} an owner")


def check_administered(by: Acting | None, account: Account, reason: str, action: AccountAction) -> Actor:
    """What no administrator may do to an account (what rbac's one rule refuses, or act on
    oneself); returns the actor to record."""
    check_reason(reason)
    if by is not None and by.user_id == account.user_id:
        raise FailedPrecondition(f"you cannot {action} your own account; ask another administrator")
    check_account_action(by, action, account)
    return actor_of(by)


def check_name_available(accounts: AccountDirectory, username: str, *, self_service: bool) -> None:
    """One answer for a taken name and, for a stranger, a reserved one."""
    if accounts.find(username) is not None or (self_service and is_reserved(username)):
        raise AlreadyExists(USERNAME_UNAVAILABLE)


def check_prober_account(accounts: AccountDirectory, normalized: str, role: str, *, most: int) -> str:
    """What a node agent's certificate may create: its roll-out prober, a member (the role), while
    fewer than `most` prober accounts exist (one per joined host is what agents need). Returns the role."""
    if not is_host_prober_name(normalized) or (role or DEFAULT_ROLE) != DEFAULT_ROLE:
        raise PermissionDenied(
            f"a node agent creates only its roll-out prober's account: a {DEFAULT_ROLE} named "
            f"{PROBER_NAME_PREFIX}-<10 hex digits of its host's name>, not {role or DEFAULT_ROLE} {normalized!r}"
        )
    if accounts.find(normalized) is not None:
        raise AlreadyExists(f"the prober account {normalized!r} exists already; log in with its password")
    if accounts.probers() >= most:
        raise ResourceExhausted(
            f"{accounts.probers()} prober accounts exist, the most a node agent may make "
            f"(PARLEY_AUTH_NODE_AGENT_PROBERS_MAX={most}): raise it, or erase the probers of hosts gone"
        )
    return DEFAULT_ROLE


def check_may_grant(by: Acting | None, role: str, *, what: str) -> str:
    """A new account's (or invitation's) role: the default for anyone who may create one, any
    other only for who may assign it. Returns the role."""
    role = validate_role(role or DEFAULT_ROLE)
    if (
        by is not None
        and role != DEFAULT_ROLE
        and not may_assign(by.role, target_current_role=DEFAULT_ROLE, new_role=role)
    ):
        raise PermissionDenied(f"role {by.role!r} may not {what} {role!r}")
    return role


Decided = tuple[list[Event], T]


def decide_register(accounts: AccountDirectory, *, user_id: str, username: str, role: str, password_hash: str,
                    self_service: bool) -> Decided[None]:  # fmt: skip
    """`username` normalized and its password hashed (by then the name may have been taken)."""
    check_name_available(accounts, username, self_service=self_service)
    return [Registered(user_id, username, role, password_hash)], None


def decide_assign_role(account: Account, by: Acting | None, role: str) -> Decided[bool]:
    """Result: whether the role changes (assigning the role it has is no change)."""
    role = validate_role(role)
    check_account_action(by, AccountAction.ASSIGN_ROLE, account)
    if by is not None and not may_assign(by.role, target_current_role=account.role, new_role=role):
        raise PermissionDenied(f"role {by.role!r} may not change {account.role!r} to {role!r}")
    if account.role == role:
        return [], False
    return [RoleAssigned(account.user_id, role, account.role)], True


def decide_set_disabled(account: Account, by: Acting | None, *, disabled: bool, reason: str) -> Decided[Actor]:
    """Result: the actor to record."""
    actor = check_administered(by, account, reason, AccountAction.DISABLE)
    if account.disabled == disabled:
        return [], actor
    return [Disabled(account.user_id, reason) if disabled else Enabled(account.user_id)], actor


def decide_revoke_session(session: Session | None, by: Acting, owner: Account | None) -> Decided[None]:
    """A user's own session, or another user's for who may revoke theirs; a revoked one stays so."""
    if session is None:
        raise NotFound("no such session")
    if session.user_id != by.user_id:
        check_account_action(by, AccountAction.REVOKE_SESSIONS, owner)
    return revocation(session, f"revoked by user:{by.user_id}"), None


def revocation(session: Session, reason: str) -> list[Event]:
    """Revoking a session: once."""
    return [] if session.revoked else [SessionRevoked(session.session_id, session.user_id, reason)]


def decide_begin_totp(account: Account, state: MfaState | None, sealed_secret: bytes) -> Decided[None]:
    if state is not None and state.enrolled:
        raise FailedPrecondition("TOTP is already enrolled for this account")
    return [TotpEnrolmentStarted(account.user_id, sealed_secret)], None


def decide_reset_mfa(account: Account, by: Acting | None, state: MfaState | None, reason: str) -> Decided[Actor]:
    """Result: the actor to record. Every session of the account is ended after it
    (`sessions_to_end`): whoever holds one may hold the phone too."""
    actor = check_administered(by, account, reason, AccountAction.RESET_MFA)
    if state is None or not (state.enrolled or state.pending_secret):
        raise FailedPrecondition(f"{account.username} has no two-factor authentication to reset")
    return [TotpReset(account.user_id, reason)], actor


def decide_change_password(account: Account, new_hash: str) -> Decided[None]:
    """After the current password was proven and the new one passed the policy; the account's
    other sessions are ended after it (`sessions_to_end`)."""
    return [PasswordChanged(account.user_id, new_hash)], None


def sessions_to_end(sessions: list[Session], *, keep: str = "") -> list[Session]:
    """An account's live sessions but the one `keep`s (the session changing the password)."""
    return [s for s in sessions if s.session_id != keep and not s.revoked]


def decide_request_erasure(accounts: AccountDirectory, requested: set[str], by: Acting | None, *, user_id: str,
                           reason: str) -> Decided[bool]:  # fmt: skip
    """The user themself, or the platform identity for them. Result: whether it was requested
    already (finishing one cut short), in which case nothing is appended."""
    user_id = checked_id(user_id, "user_id")
    check_reason(reason)
    if by is not None and by.user_id != user_id:
        raise PermissionDenied("only the user themself, or the operator on their behalf, may erase an account")
    if user_id in requested:
        return [], True
    if accounts.by_id(user_id) is None:
        raise NotFound("no such user")
    return [ErasureRequested(user_id, str(actor_of(by)), reason)], False


class LoginVerdict(Enum):
    WRONG = "wrong"  # no such account or the wrong password: one answer for both
    DISABLED = "disabled"
    SECOND_FACTOR_MISSING = "second factor missing"
    SECOND_FACTOR_DUE = "second factor due"  # enrolled and a code given: check it
    NO_SECOND_FACTOR = "no second factor"  # the password is enough


def judge_login(
    account: Account | None, password_ok: bool, state: MfaState | None, *, code_given: bool
) -> LoginVerdict:
    """What a login's password check (against the stored hash) means, before any code is checked."""
    if account is None or not password_ok:
        return LoginVerdict.WRONG
    if account.disabled:
        return LoginVerdict.DISABLED
    if state is None or not state.enrolled:
        return LoginVerdict.NO_SECOND_FACTOR
    return LoginVerdict.SECOND_FACTOR_DUE if code_given else LoginVerdict.SECOND_FACTOR_MISSING


def check_login_input(username: str, password: str) -> None:
    if not username or not password:
        raise InvalidArgument("username and password are required")
    if len(username) > 256 or len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidArgument("username or password is too long")
