"""Auth's decisions (domain.py, facts.py) without a server: the state read, the command, the facts decided
or the refusal, worded as the caller reads it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from parley_auth import codec, domain, facts
from parley_auth.accounts import Account, AccountDirectory
from parley_auth.domain import LoginVerdict
from parley_auth.mfa import MfaState
from parley_auth.password_policy import check_current_password_given
from parley_auth.sealing import PASSWORD_HASH, SecretSealer
from parley_auth.sessions import Session
from parley_core.actor import Actor
from parley_core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from parley_core.rbac import Permission, permissions_of


@dataclass
class By:
    """A caller as the domain sees one (parley_core.tokens.Caller has the same shape)."""

    user_id: str
    role: str

    def require(self, permission: Permission, *, what: str = "this call") -> None:
        if permission not in permissions_of(self.role):
            raise PermissionDenied(f"role {self.role!r} may not make {what}")


ADMIN, OWNER, MEMBER = By("a1", "admin"), By("o1", "owner"), By("m1", "member")


def account(user_id: str = "u1", role: str = "member", *, disabled: bool = False) -> Account:
    return Account(user_id, f"user-{user_id}", "$argon2id$hash", role, disabled=disabled)


def directory(*accounts: Account) -> AccountDirectory:
    found = AccountDirectory()
    for a in accounts:
        found.add(a)
    return found


def session(session_id: str, user_id: str = "u1", *, revoked: str = "") -> Session:
    return Session(session_id=session_id, user_id=user_id, started_at=0.0, revoked_reason=revoked)


def test_register_decides_the_account_unless_the_name_is_taken_or_reserved_for_strangers() -> None:
    events, _ = domain.decide_register(directory(), user_id="u9", username="carol", role="member",
                                       password_hash="$h", self_service=True)  # fmt: skip
    assert events == [facts.Registered("u9", "carol", "member", "$h")]
    with pytest.raises(AlreadyExists, match="not available"):
        domain.decide_register(directory(Account("u1", "carol", "$h", "member")), user_id="u9", username="carol",
                               role="member", password_hash="$h", self_service=False)  # fmt: skip
    with pytest.raises(AlreadyExists, match="not available"):
        domain.decide_register(directory(), user_id="u9", username="admin", role="member", password_hash="$h",
                               self_service=True)  # fmt: skip
    events, _ = domain.decide_register(directory(), user_id="u9", username="admin", role="admin", password_hash="$h",
                                       self_service=False)  # fmt: skip
    assert len(events) == 1  # an administrator may create a reserved name


def test_a_new_accounts_role_is_granted_only_by_who_may_assign_it() -> None:
    assert domain.check_may_grant(MEMBER, "", what="create a user with role") == "member"
    assert domain.check_may_grant(None, "owner", what="create a user with role") == "owner"
    with pytest.raises(PermissionDenied, match="may not invite a 'owner'"):
        domain.check_may_grant(ADMIN, "owner", what="invite a")
    with pytest.raises(InvalidArgument, match="role must be one of"):
        domain.check_may_grant(ADMIN, "emperor", what="invite a")


def test_assign_role_changes_once_and_only_within_the_callers_power() -> None:
    target = account()
    events, changed = domain.decide_assign_role(target, ADMIN, "guest")
    assert events == [facts.RoleAssigned("u1", "guest", "member")]
    assert changed
    assert domain.decide_assign_role(target, ADMIN, "member") == ([], False)  # the role it has: no change
    with pytest.raises(InvalidArgument):
        domain.decide_assign_role(target, ADMIN, "emperor")
    with pytest.raises(PermissionDenied):
        domain.decide_assign_role(target, MEMBER, "guest")  # no users.manage
    with pytest.raises(PermissionDenied, match="only an owner"):
        domain.decide_assign_role(account(role="owner"), ADMIN, "member")
    with pytest.raises(PermissionDenied, match="may not change 'member' to 'owner'"):
        domain.decide_assign_role(target, ADMIN, "owner")
    events, _ = domain.decide_assign_role(target, None, "owner")  # the platform identity
    assert events == [facts.RoleAssigned("u1", "owner", "member")]


def test_disable_and_enable() -> None:
    target = account()
    events, actor = domain.decide_set_disabled(target, ADMIN, disabled=True, reason="left")
    assert events == [facts.Disabled("u1", "left")]
    assert actor == Actor.user("a1")
    assert domain.decide_set_disabled(target, None, disabled=False, reason="")[0] == []  # already enabled
    events, _ = domain.decide_set_disabled(account(disabled=True), ADMIN, disabled=False, reason="")
    assert events == [facts.Enabled("u1")]
    with pytest.raises(FailedPrecondition, match="your own account"):
        domain.decide_set_disabled(account("a1", "admin"), ADMIN, disabled=True, reason="")
    with pytest.raises(InvalidArgument, match="reason must be at most"):
        domain.decide_set_disabled(target, ADMIN, disabled=True, reason="x" * 501)
    with pytest.raises(PermissionDenied):
        domain.decide_set_disabled(target, MEMBER, disabled=True, reason="")


def test_revoke_session_own_or_within_the_callers_power_and_once() -> None:
    own = session("s1", "m1")
    events, _ = domain.decide_revoke_session(own, MEMBER, account("m1"))
    assert events == [facts.SessionRevoked("s1", "m1", "revoked by user:m1")]
    with pytest.raises(NotFound, match="no such session"):
        domain.decide_revoke_session(None, MEMBER, None)
    with pytest.raises(PermissionDenied):
        domain.decide_revoke_session(session("s2", "u1"), MEMBER, account())
    assert len(domain.decide_revoke_session(session("s2", "u1"), ADMIN, account())[0]) == 1
    assert domain.decide_revoke_session(session("s3", "m1", revoked="logout"), MEMBER, account("m1"))[0] == []


def test_totp_enrolment_starts_only_when_none_is_enrolled() -> None:
    events, _ = domain.decide_begin_totp(account(), None, b"sealed")
    assert events == [facts.TotpEnrolmentStarted("u1", b"sealed")]
    with pytest.raises(FailedPrecondition, match="already enrolled"):
        domain.decide_begin_totp(account(), MfaState(secret=b"s"), b"sealed")


def test_mfa_reset_needs_something_to_reset() -> None:
    events, actor = domain.decide_reset_mfa(account(), ADMIN, MfaState(secret=b"s"), "lost phone")
    assert events == [facts.TotpReset("u1", "lost phone")]
    assert actor == Actor.user("a1")
    assert domain.decide_reset_mfa(account(), None, MfaState(pending_secret=b"p"), "")[0]  # a pending one too
    with pytest.raises(FailedPrecondition, match="no two-factor authentication to reset"):
        domain.decide_reset_mfa(account(), ADMIN, MfaState(), "")
    with pytest.raises(FailedPrecondition, match="your own account"):
        domain.decide_reset_mfa(account("a1", "admin"), ADMIN, MfaState(secret=b"s"), "")


def test_password_change_then_the_other_live_sessions_end() -> None:
    here, there, gone = session("s1"), session("s2"), session("s3", revoked="logout")
    assert domain.decide_change_password(account(), "$new") == ([facts.PasswordChanged("u1", "$new")], None)
    assert domain.sessions_to_end([here, there, gone], keep="s1") == [there]
    assert domain.sessions_to_end([here, there, gone]) == [here, there]
    with pytest.raises(InvalidArgument, match="current_password is required"):
        check_current_password_given("")


def test_erasure_request_by_the_user_or_the_platform_once() -> None:
    accounts = directory(account("m1"))
    events, already = domain.decide_request_erasure(accounts, set(), MEMBER, user_id="m1", reason="bye")
    assert events == [facts.ErasureRequested("m1", "user:m1", "bye")]
    assert not already
    assert domain.decide_request_erasure(accounts, {"m1"}, None, user_id="m1", reason="") == ([], True)
    with pytest.raises(PermissionDenied, match="only the user themself"):
        domain.decide_request_erasure(accounts, set(), ADMIN, user_id="m1", reason="")
    with pytest.raises(NotFound):
        domain.decide_request_erasure(accounts, set(), None, user_id="nobody", reason="")
    with pytest.raises(InvalidArgument, match="user_id is required"):
        domain.decide_request_erasure(accounts, set(), None, user_id="../etc", reason="")


def test_login_verdict_given_the_password_check() -> None:
    enrolled = MfaState(secret=b"s")
    assert domain.judge_login(None, True, None, code_given=False) is LoginVerdict.WRONG
    assert domain.judge_login(account(), False, None, code_given=False) is LoginVerdict.WRONG
    assert domain.judge_login(account(disabled=True), True, None, code_given=False) is LoginVerdict.DISABLED
    assert domain.judge_login(account(), True, MfaState(), code_given=False) is LoginVerdict.NO_SECOND_FACTOR
    assert domain.judge_login(account(), True, enrolled, code_given=False) is LoginVerdict.SECOND_FACTOR_MISSING
    assert domain.judge_login(account(), True, enrolled, code_given=True) is LoginVerdict.SECOND_FACTOR_DUE
    with pytest.raises(InvalidArgument, match="too long"):
        domain.check_login_input("alice", "x" * 2000)


def test_codec_writes_each_fact_as_its_auth_event_with_the_hash_sealed() -> None:
    sealer = SecretSealer(b"k" * 32)

    def seal(value: bytes, field: str, owner: str) -> bytes:
        return sealer.seal_field(value, field=field, owner=owner)

    registered = codec.payload(facts.Registered("u1", "alice", "member", "$h"), seal)
    assert type(registered).__name__ == "UserRegistered"
    assert not registered.password_hash  # type: ignore[attr-defined]
    assert sealer.open_field(registered.sealed_password_hash, field=PASSWORD_HASH, owner="u1") == b"$h"  # type: ignore[attr-defined]
    assert set(codec.ENCODERS) == set(facts.Event.__args__)  # type: ignore[attr-defined]
