"""Every auth RPC answers bad input with one precise status and a message saying what to fix,
through the gateway as a client sees it (the E2EE key directory is tested with its own file)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from parley.auth.v1 import auth_pb2

from parley_testing.stack import PASSWORD, TIMEOUT_S, Stack, bearer

pytestmark = pytest.mark.asyncio

Code = grpc.StatusCode


async def answer(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return Code.OK, ""


async def test_bad_input_to_each_auth_rpc_gets_a_precise_status(stack: Stack) -> None:
    await stack.create_user("root", "owner")
    mia = await stack.create_user("mia", "member")
    owner = bearer((await stack.login("root")).access_token)
    member = bearer((await stack.login("mia")).access_token)
    g = stack.gateway()
    a = auth_pb2
    long_name = "n" * 40

    cases: list[tuple[str, Callable[[], Awaitable[Any]], grpc.StatusCode, str]] = [
        ("Register: bad characters", lambda: g.Register(a.RegisterRequest(username="a b", password=PASSWORD)),
         Code.INVALID_ARGUMENT, "username must be"),
        ("Register: too long", lambda: g.Register(a.RegisterRequest(username=long_name, password=PASSWORD)),
         Code.INVALID_ARGUMENT, "3-32 characters"),
        ("Register: weak password", lambda: g.Register(a.RegisterRequest(username="nora", password="short")),
         Code.INVALID_ARGUMENT, "at least 10"),
        ("Login: missing password", lambda: g.Login(a.LoginRequest(username="mia")),
         Code.INVALID_ARGUMENT, "required"),
        ("Login: oversized", lambda: g.Login(a.LoginRequest(username="m" * 300, password="x")),
         Code.INVALID_ARGUMENT, "too long"),
        ("Refresh: malformed token", lambda: g.Refresh(a.RefreshRequest(refresh_token="no-dot")),
         Code.UNAUTHENTICATED, "log in again"),
        ("ChangePassword: no current password",
         lambda: g.ChangePassword(a.ChangePasswordRequest(new_password="violet orbit lantern 42"), metadata=member),
         Code.INVALID_ARGUMENT, "current_password is required"),
        ("ChangePassword: weak new password",
         lambda: g.ChangePassword(a.ChangePasswordRequest(current_password=PASSWORD, new_password="mia"),
                                  metadata=member),
         Code.INVALID_ARGUMENT, "at least 10"),
        ("ListSessions: bad user id", lambda: g.ListSessions(a.ListSessionsRequest(user_id="../x"), metadata=owner),
         Code.INVALID_ARGUMENT, "user_id"),
        ("ListSessions: unknown user", lambda: g.ListSessions(a.ListSessionsRequest(user_id="f" * 32), metadata=owner),
         Code.NOT_FOUND, "no such user"),
        ("RevokeSession: no id", lambda: g.RevokeSession(a.RevokeSessionRequest(), metadata=member),
         Code.INVALID_ARGUMENT, "session_id is required"),
        ("RevokeSession: unknown", lambda: g.RevokeSession(a.RevokeSessionRequest(session_id="f" * 32),
                                                           metadata=member),
         Code.NOT_FOUND, "no such session"),
        ("CreateUser: unknown role",
         lambda: g.CreateUser(a.CreateUserRequest(username="olga", password=PASSWORD, role="god"), metadata=owner),
         Code.INVALID_ARGUMENT, "role must be one of"),
        ("CreateUser: name taken",
         lambda: g.CreateUser(a.CreateUserRequest(username="MIA", password=PASSWORD), metadata=owner),
         Code.ALREADY_EXISTS, "not available"),
        ("AssignRole: unknown user",
         lambda: g.AssignRole(a.AssignRoleRequest(user_id="f" * 32, role="guest"), metadata=owner),
         Code.NOT_FOUND, "no such user"),
        ("AssignRole: unknown role",
         lambda: g.AssignRole(a.AssignRoleRequest(user_id=mia.user_id, role="god"), metadata=owner),
         Code.INVALID_ARGUMENT, "role must be one of"),
        ("SetAccountDisabled: reason too long",
         lambda: g.SetAccountDisabled(a.SetAccountDisabledRequest(user_id=mia.user_id, disabled=True,
                                                                  reason="r" * 501), metadata=owner),
         Code.INVALID_ARGUMENT, "at most 500"),
        ("AssignRole: no user id", lambda: g.AssignRole(a.AssignRoleRequest(role="guest"), metadata=owner),
         Code.INVALID_ARGUMENT, "user_id is required"),
        ("SetAccountDisabled: no user id",
         lambda: g.SetAccountDisabled(a.SetAccountDisabledRequest(disabled=True), metadata=owner),
         Code.INVALID_ARGUMENT, "user_id is required"),
        ("ConfirmTotpEnrolment: nothing begun",
         lambda: g.ConfirmTotpEnrolment(a.ConfirmTotpEnrolmentRequest(totp_code="123456"), metadata=member),
         Code.FAILED_PRECONDITION, "BeginTotpEnrolment first"),
        ("SetMfaRequired: unknown role",
         lambda: g.SetMfaRequired(a.SetMfaRequiredRequest(role="god", required=True), metadata=owner),
         Code.INVALID_ARGUMENT, "role must be one of"),
        ("CreateInvite: too long",
         lambda: g.CreateInvite(a.CreateInviteRequest(valid_hours=10_000), metadata=owner),
         Code.INVALID_ARGUMENT, "valid_hours must be"),
        ("ResetMfa: no user id", lambda: g.ResetMfa(a.AccountActionRequest(), metadata=owner),
         Code.INVALID_ARGUMENT, "user_id is required"),
        ("RegenerateRecoveryCodes: not enrolled",
         lambda: g.RegenerateRecoveryCodes(a.RegenerateRecoveryCodesRequest(password=PASSWORD), metadata=member),
         Code.FAILED_PRECONDITION, "enrol TOTP first"),
    ]  # fmt: skip
    wrong = []
    for name, call, code, fragment in cases:
        got, message = await answer(call())
        if got != code or fragment not in message:
            wrong.append(f"{name}: {got.name} {message!r} (expected {code.name} with {fragment!r})")
    assert wrong == []

    # After BeginTotpEnrolment, a code that cannot be one is refused for what it is.
    await g.BeginTotpEnrolment(a.BeginTotpEnrolmentRequest(), metadata=member, timeout=TIMEOUT_S)
    for bad in ("", "12345", "abcdef", "1234567"):
        confirm = g.ConfirmTotpEnrolment(a.ConfirmTotpEnrolmentRequest(totp_code=bad), metadata=member)
        got, message = await answer(confirm)
        assert (got, "6 digits" in message) == (Code.INVALID_ARGUMENT, True), bad
