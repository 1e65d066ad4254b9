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

from parley_testing.nats import NatsTestServer
from parley_testing.security import security_events
from parley_testing.stack import PASSWORD, TIMEOUT_S, Stack, bearer
from parley_testing.statuses import code_of
from parley_testing.waiting import until

STEP = 30


def authenticator(secret_base32: str) -> TOTP:
    """What a phone app does with the otpauth URI's secret."""
    secret = base64.b32decode(secret_base32 + "=" * (-len(secret_base32) % 8))
    return TOTP(secret, 6, SHA1(), STEP)


def code(app: TOTP, steps_ahead: int = 0) -> str:
    return app.generate(int(time.time()) + steps_ahead * STEP).decode()


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

    code_, message = await code_of(login(stack, "alice"))
    assert code_ == grpc.StatusCode.UNAUTHENTICATED
    assert "two-factor" in message
    # The code that confirmed the enrolment is already spent.
    assert (await code_of(login(stack, "alice", totp_code=code(app))))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert (await code_of(login(stack, "alice", totp_code="000000")))[0] == grpc.StatusCode.UNAUTHENTICATED

    next_code = code(app, steps_ahead=1)
    response = await stack.gateway().Login(
        auth_pb2.LoginRequest(username="alice", password=PASSWORD, totp_code=next_code), timeout=TIMEOUT_S
    )
    assert jwt.decode(response.access_token, options={"verify_signature": False})["amr"] == ["pwd", "otp"]
    # Replay of a code that just worked.
    assert (await code_of(login(stack, "alice", totp_code=next_code)))[0] == grpc.StatusCode.UNAUTHENTICATED

    assert (await code_of(login(stack, "alice", recovery_code=recovery[0].upper())))[0] == grpc.StatusCode.OK
    assert (await code_of(login(stack, "alice", recovery_code=recovery[0])))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert (await code_of(login(stack, "alice", recovery_code=recovery[1])))[0] == grpc.StatusCode.OK


async def test_two_logins_racing_with_one_code_get_one_session(stack: Stack) -> None:
    await stack.create_user("bob", "member")
    app, _ = await enrol(stack, "bob")
    racing = code(app, steps_ahead=1)
    results = await asyncio.gather(*(code_of(login(stack, "bob", totp_code=racing)) for _ in range(4)))
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
    code_, message = await code_of(refused)
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
    assert (await code_of(allowed))[0] == grpc.StatusCode.OK
    # A refreshed token keeps the second factor it was born with.
    refreshed = await gateway.Refresh(auth_pb2.RefreshRequest(refresh_token=second.refresh_token), timeout=TIMEOUT_S)
    again = fleet.ListInstances(
        fleet_pb2.ListInstancesRequest(), metadata=bearer(refreshed.access_token), timeout=TIMEOUT_S
    )
    assert (await code_of(again))[0] == grpc.StatusCode.OK


async def test_an_admin_resets_a_lost_authenticator_and_the_users_sessions_end(
    stack: Stack, nats_server: NatsTestServer
) -> None:
    await stack.create_user("boss", "admin")
    await stack.create_user("chief", "owner")
    await stack.create_user("alice", "member")
    app, _ = await enrol(stack, "alice")
    session = await stack.gateway().Login(
        auth_pb2.LoginRequest(username="alice", password=PASSWORD, totp_code=code(app, 1)), timeout=TIMEOUT_S
    )
    alice_id = session.user_id
    gateway = stack.gateway()
    boss = await stack.login("boss")
    admin = bearer(boss.access_token)

    def reset(user_id: str, token: tuple[tuple[str, str]] = admin, reason: str = "lost phone") -> object:
        return gateway.ResetMfa(
            auth_pb2.AccountActionRequest(user_id=user_id, reason=reason), metadata=token, timeout=TIMEOUT_S
        )

    assert (await code_of(reset(alice_id)))[0] == grpc.StatusCode.OK
    # Sessions are revoked: whoever holds one may be whoever holds the phone.
    await until(lambda: stack.access("gateway").is_revoked(session.session_id), "the session revoked", TIMEOUT_S)
    sessions = gateway.ListSessions(
        auth_pb2.ListSessionsRequest(), metadata=bearer(session.access_token), timeout=TIMEOUT_S
    )
    assert (await code_of(sessions))[0] == grpc.StatusCode.UNAUTHENTICATED
    # The password alone logs in now, and the user can enrol a new authenticator.
    assert (await code_of(login(stack, "alice")))[0] == grpc.StatusCode.OK
    new_app, _ = await enrol(stack, "alice")
    assert (await code_of(login(stack, "alice", totp_code=code(new_app, 1))))[0] == grpc.StatusCode.OK

    [record] = await security_events(nats_server, "mfa_reset")
    assert (record.user_id, record.actor, record.detail) == (alice_id, f"user:{boss.user_id}", "lost phone")

    # What an admin may not do, each with its own answer.
    chief = (await stack.login("chief")).user_id
    await enrol(stack, "chief")
    assert (await code_of(reset(chief)))[0] == grpc.StatusCode.PERMISSION_DENIED  # an owner's, by an admin
    assert (await code_of(reset(boss.user_id)))[0] == grpc.StatusCode.FAILED_PRECONDITION  # one's own
    await stack.create_user("plain", "member")
    plain = (await stack.login("plain")).user_id
    code_, message = await code_of(reset(plain))
    assert code_ == grpc.StatusCode.FAILED_PRECONDITION
    assert "no two-factor" in message
    assert (await code_of(reset("0" * 32)))[0] == grpc.StatusCode.NOT_FOUND
    assert (await code_of(reset("not/an-id")))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert (await code_of(reset(alice_id, reason="x" * 501)))[0] == grpc.StatusCode.INVALID_ARGUMENT
    member = bearer((await stack.login("plain")).access_token)
    assert (await code_of(reset(alice_id, token=member)))[0] == grpc.StatusCode.PERMISSION_DENIED


async def test_recovery_codes_are_regenerated_with_a_code_or_the_password_and_old_ones_stop_working(
    stack: Stack, nats_server: NatsTestServer
) -> None:
    await stack.create_user("bob", "member")
    app, first_codes = await enrol(stack, "bob")
    gateway = stack.gateway()
    token = bearer(await recovery_login(stack, "bob", first_codes[0]))

    def regenerate(**proof: str) -> object:
        request = auth_pb2.RegenerateRecoveryCodesRequest(**proof)
        return gateway.RegenerateRecoveryCodes(request, metadata=token, timeout=TIMEOUT_S)

    by_password = await regenerate(password=PASSWORD)
    second_codes = list(by_password.recovery_codes)
    assert len(second_codes) == 10
    assert not set(second_codes) & set(first_codes)
    assert (await code_of(login(stack, "bob", recovery_code=first_codes[1])))[0] == grpc.StatusCode.UNAUTHENTICATED

    current = code(app, 1)
    by_code = await regenerate(totp_code=current)
    third_codes = list(by_code.recovery_codes)
    assert (await code_of(login(stack, "bob", recovery_code=second_codes[0])))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert (await code_of(login(stack, "bob", recovery_code=third_codes[0])))[0] == grpc.StatusCode.OK
    # The code is spent: neither a second regeneration nor a login takes it again.
    assert (await code_of(regenerate(totp_code=current)))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert (await code_of(login(stack, "bob", totp_code=current)))[0] == grpc.StatusCode.UNAUTHENTICATED

    code_, message = await code_of(regenerate(password="not-the-password"))
    assert (code_, message) == (grpc.StatusCode.UNAUTHENTICATED, "the password is wrong")
    code_, message = await code_of(regenerate())
    assert code_ == grpc.StatusCode.INVALID_ARGUMENT
    assert "totp_code" in message
    assert (await code_of(regenerate(totp_code="1" * 17)))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert len(await security_events(nats_server, "recovery_codes_regenerated")) == 2

    await stack.create_user("carol", "member")
    carol = bearer((await stack.login("carol")).access_token)
    not_enrolled = gateway.RegenerateRecoveryCodes(
        auth_pb2.RegenerateRecoveryCodesRequest(password=PASSWORD), metadata=carol, timeout=TIMEOUT_S
    )
    assert (await code_of(not_enrolled))[0] == grpc.StatusCode.FAILED_PRECONDITION


async def recovery_login(stack: Stack, username: str, recovery_code: str) -> str:
    response = await stack.gateway().Login(
        auth_pb2.LoginRequest(username=username, password=PASSWORD, recovery_code=recovery_code), timeout=TIMEOUT_S
    )
    return response.access_token
