"""Every action one account may take on another, by every caller role on every target role,
through the gateway: allowed exactly when the caller holds the action's permission and the
target is no owner unless the caller is one (rbac.may_act_on_account, the one rule), and for a
role change also only an owner touches the owner and admin roles. A refused action changes
nothing; an allowed one does what it says.

The expectation is written out here from the rule's statement, not computed by rbac, so a change
to the rule shows up as a failing cell.
"""

from __future__ import annotations

from collections.abc import Awaitable

import grpc
from parley.auth.v1 import auth_pb2, auth_pb2_grpc
from parley.gateway.v1 import gateway_pb2_grpc

from parley_core.rbac import ROLES, AccountAction, may_act_on_account, permissions_of
from parley_testing.stack import TIMEOUT_S, Stack, bearer
from parley_testing.statuses import code_of

NEEDS = {
    AccountAction.ASSIGN_ROLE: "roles.assign",
    AccountAction.DISABLE: "users.manage",
    AccountAction.RESET_MFA: "users.manage",
    AccountAction.UNLOCK: "users.manage",
    AccountAction.REVOKE_SESSIONS: "sessions.revoke_any",
}


def expected(action: AccountAction, caller: str, target: str) -> bool:
    if NEEDS[action] not in permissions_of(caller):
        return False
    if target == "owner" or (action is AccountAction.ASSIGN_ROLE and target == "admin"):
        return caller == "owner"
    return True


def test_the_rule_without_servers() -> None:
    for action in AccountAction:
        for caller in ROLES:
            for target in ROLES:
                allowed = may_act_on_account(caller, action, target_role=target)
                owner_rule = target != "owner" or caller == "owner"
                assert allowed == (NEEDS[action] in permissions_of(caller) and owner_rule), (action, caller, target)


def act(
    gateway: gateway_pb2_grpc.GatewayAsyncStub,
    action: AccountAction,
    token: tuple[tuple[str, str]],
    target: auth_pb2.Account,
    session: auth_pb2.LoginResponse,
) -> Awaitable[object]:
    """`action` on `target` (their `session` for a revocation), as the caller whose `token` it is."""
    if action is AccountAction.ASSIGN_ROLE:  # the role it has: allowed, it changes nothing
        request = auth_pb2.AssignRoleRequest(user_id=target.user_id, role=target.role)
        return gateway.AssignRole(request, metadata=token, timeout=TIMEOUT_S)
    if action is AccountAction.DISABLE:
        disable = auth_pb2.SetAccountDisabledRequest(user_id=target.user_id, disabled=True, reason="table test")
        return gateway.SetAccountDisabled(disable, metadata=token, timeout=TIMEOUT_S)
    if action is AccountAction.RESET_MFA:
        reset = auth_pb2.AccountActionRequest(user_id=target.user_id, reason="table test")
        return gateway.ResetMfa(reset, metadata=token, timeout=TIMEOUT_S)
    if action is AccountAction.UNLOCK:
        unlock = auth_pb2.AccountActionRequest(user_id=target.user_id, reason="table test")
        return gateway.UnlockAccount(unlock, metadata=token, timeout=TIMEOUT_S)
    revoke = auth_pb2.RevokeSessionRequest(session_id=session.session_id)
    return gateway.RevokeSession(revoke, metadata=token, timeout=TIMEOUT_S)


async def test_every_action_on_another_account_by_every_role(stack: Stack) -> None:
    gateway = stack.gateway()
    platform = auth_pb2_grpc.AuthServiceStub(stack.internal("auth", identity="platform"))
    for role in ROLES:
        await stack.create_user(f"caller-{role}", role)
    targets = {role: await stack.create_user(f"target-{role}", role) for role in ROLES}
    tokens = {role: bearer((await stack.login(f"caller-{role}")).access_token) for role in ROLES}

    async def disabled(target_role: str) -> bool:
        request = auth_pb2.GetAccountRequest(username=f"target-{target_role}")
        return (await platform.GetAccount(request, timeout=TIMEOUT_S)).disabled

    wrong: list[str] = []
    for caller_role in ROLES:
        token = tokens[caller_role]
        for target_role, target in targets.items():
            session = await stack.login(f"target-{target_role}")  # a session of theirs to revoke
            for action in AccountAction:
                code, details = await code_of(act(gateway, action, token, target, session))
                allowed = expected(action, caller_role, target_role)
                cell = f"{caller_role} -> {action.name} -> {target_role}: {code.name} {details!r}"
                owner_refusal = target_role == "owner" and NEEDS[action] in permissions_of(caller_role)
                if not allowed:
                    if code != grpc.StatusCode.PERMISSION_DENIED:
                        wrong.append(cell + " (expected PERMISSION_DENIED)")
                    elif owner_refusal and details != f"only an owner may {action.value} an owner":
                        wrong.append(cell + " (the refusal should say only an owner may)")
                    continue
                # Allowed: it happened (resetting MFA nobody enrolled is refused on its own terms).
                done = {
                    AccountAction.ASSIGN_ROLE: code == grpc.StatusCode.OK,
                    AccountAction.DISABLE: code == grpc.StatusCode.OK and await disabled(target_role),
                    AccountAction.RESET_MFA: code == grpc.StatusCode.FAILED_PRECONDITION
                    and "no two-factor authentication" in details,
                    AccountAction.REVOKE_SESSIONS: code == grpc.StatusCode.OK,
                    AccountAction.UNLOCK: code == grpc.StatusCode.FAILED_PRECONDITION and "not locked out" in details,
                }[action]
                if not done:
                    wrong.append(cell + " (expected it to be done)")
            # Refused revocations left the session alive; allowed ones ended it.
            sessions = await gateway.ListSessions(
                auth_pb2.ListSessionsRequest(user_id=target.user_id), metadata=tokens["owner"], timeout=TIMEOUT_S
            )
            revoked = next(s.revoked for s in sessions.sessions if s.session_id == session.session_id)
            if revoked != expected(AccountAction.REVOKE_SESSIONS, caller_role, target_role):
                wrong.append(f"{caller_role} -> REVOKE_SESSIONS -> {target_role}: session revoked={revoked}")
            await platform.SetAccountDisabled(
                auth_pb2.SetAccountDisabledRequest(user_id=target.user_id, disabled=False), timeout=TIMEOUT_S
            )
    assert wrong == []
