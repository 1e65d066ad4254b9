"""TOTP enrolment, single-use codes, recovery codes, and MFA required per role at every service."""

from __future__ import annotations

import asyncio
import base64
import time
from urllib.parse import parse_qs, urlparse

import grpc
import jwt
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP
from parley.auth.v1 import auth_pb2
from parley.fleet.v1 import fleet_pb2, fleet_pb2_grpc

from parley_core.testing.stack import PASSWORD, TIMEOUT_S, Stack, bearer
from parley_core.testing.waiting import until

STEP = 30


def authenticator(secret_base32: str) -> TOTP:
    """What a phone app does with the otpauth URI's secret."""
    secret = base64.b32decode(secret_base32 + "=" * (-len(secret_base32) % 8))
    return TOTP(secret, 6, SHA1(), STEP)


def code(app: TOTP, steps_ahead: int = 0) -> str:
    return app.generate(int(time.time()) + steps_ahead * STEP).decode()


async def status(call: object) -> tuple[grpc.StatusCode, str]:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def enrol(stack: Stack, username: str) -> tuple[TOTP, list[str]]:
    gateway = stack.gateway()
    token = bearer((await stack.login(username)).access_token)
    begun = await gateway.BeginTotpEnrolment(auth_pb2.BeginTotpEnrolmentRequest(), metadata=token, timeout=TIMEOUT_S)
    uri = urlparse(begun.otpauth_uri)
    assert uri.scheme == "otpauth"
    assert uri.netloc == "totp"
    assert parse_qs(uri.query)["issuer"] == ["Parley"]
    assert parse_qs(uri.query)["secret"] == [begun.secret_base32]
    app = authenticator(begun.secret_base32)
    confirmed = await gateway.ConfirmTotpEnrolment(
        auth_pb2.ConfirmTotpEnrolmentRequest(totp_code=code(app)), metadata=token, timeout=TIMEOUT_S
    )
    return app, list(confirmed.recovery_codes)


def login(stack: Stack, username: str, **second_factor: str) -> object:
    request = auth_pb2.LoginRequest(username=username, password=PASSWORD, **second_factor)
    return stack.gateway().Login(request, timeout=TIMEOUT_S)


async def test_totp_code_is_accepted_once_and_recovery_codes_once(stack: Stack) -> None:
    await stack.create_user("alice", "member")
    app, recovery = await enrol(stack, "alice")
    assert len(recovery) == 10
    assert len(set(recovery)) == 10

    code_, message = await status(login(stack, "alice"))
    assert code_ == grpc.StatusCode.UNAUTHENTICATED
    assert "two-factor" in message
    # The code that confirmed the enrolment is already spent.
    assert (await status(login(stack, "alice", totp_code=code(app))))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert (await status(login(stack, "alice", totp_code="000000")))[0] == grpc.StatusCode.UNAUTHENTICATED

    next_code = code(app, steps_ahead=1)
    response = await stack.gateway().Login(
        auth_pb2.LoginRequest(username="alice", password=PASSWORD, totp_code=next_code), timeout=TIMEOUT_S
    )
    assert jwt.decode(response.access_token, options={"verify_signature": False})["amr"] == ["pwd", "otp"]
    # Replay of a code that just worked.
    assert (await status(login(stack, "alice", totp_code=next_code)))[0] == grpc.StatusCode.UNAUTHENTICATED

    assert (await status(login(stack, "alice", recovery_code=recovery[0].upper())))[0] == grpc.StatusCode.OK
    assert (await status(login(stack, "alice", recovery_code=recovery[0])))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert (await status(login(stack, "alice", recovery_code=recovery[1])))[0] == grpc.StatusCode.OK


async def test_two_logins_racing_with_one_code_get_one_session(stack: Stack) -> None:
    await stack.create_user("bob", "member")
    app, _ = await enrol(stack, "bob")
    racing = code(app, steps_ahead=1)
    results = await asyncio.gather(*(status(login(stack, "bob", totp_code=racing)) for _ in range(4)))
    assert sorted(c.name for c, _ in results) == ["OK", "UNAUTHENTICATED", "UNAUTHENTICATED", "UNAUTHENTICATED"]


async def test_mfa_required_for_a_role_is_enforced_by_other_services(stack: Stack) -> None:
    await stack.create_user("root", "owner")
    await stack.create_user("opal", "operator")
    owner = bearer((await stack.login("root")).access_token)
    gateway = stack.gateway()
    await gateway.SetMfaRequired(
        auth_pb2.SetMfaRequiredRequest(role="operator", required=True), metadata=owner, timeout=TIMEOUT_S
    )
    await until(
        lambda: stack.access("patch-registry").mfa_required("operator"), "MFA required at the registry", TIMEOUT_S
    )

    first = await stack.login("opal")
    assert first.mfa_enrolment_required
    fleet = fleet_pb2_grpc.FleetServiceStub(stack.internal("patch-registry"))
    refused = fleet.ListInstances(
        fleet_pb2.ListInstancesRequest(), metadata=bearer(first.access_token), timeout=TIMEOUT_S
    )
    code_, message = await status(refused)
    assert code_ == grpc.StatusCode.PERMISSION_DENIED
    assert "two-factor" in message

    app, _ = await enrol(stack, "opal")
    second = await stack.gateway().Login(
        auth_pb2.LoginRequest(username="opal", password=PASSWORD, totp_code=code(app, 1)), timeout=TIMEOUT_S
    )
    assert not second.mfa_enrolment_required
    allowed = fleet.ListInstances(
        fleet_pb2.ListInstancesRequest(), metadata=bearer(second.access_token), timeout=TIMEOUT_S
    )
    assert (await status(allowed))[0] == grpc.StatusCode.OK
    # A refreshed token keeps the second factor it was born with.
    refreshed = await gateway.Refresh(auth_pb2.RefreshRequest(refresh_token=second.refresh_token), timeout=TIMEOUT_S)
    again = fleet.ListInstances(
        fleet_pb2.ListInstancesRequest(), metadata=bearer(refreshed.access_token), timeout=TIMEOUT_S
    )
    assert (await status(again))[0] == grpc.StatusCode.OK
