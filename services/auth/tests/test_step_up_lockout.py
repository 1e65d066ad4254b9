"""Step-up checks count as failed logins: a wrong current password to ChangePassword, a wrong
password or code to RegenerateRecoveryCodes, a wrong code to ConfirmTotpEnrolment. They share
the login's lockout for the account and the client's address, and each is a security event, so
a stolen session buys no free guesses, and the owner at her own address is not locked out.

Auth is called as the gateway calls it, with the client's address in `x-parley-source`.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable

import grpc
import pytest
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP
from parley.auth.v1 import auth_pb2, auth_pb2_grpc

from parley_auth.lockout import LockoutPolicy
from parley_testing.nats import NatsTestServer
from parley_testing.security import security_events
from parley_testing.stack import PASSWORD, TIMEOUT_S, Stack
from parley_testing.statuses import code_of

pytestmark = pytest.mark.asyncio

THIEF = "ipv4:203.0.113.66"  # holds a stolen session
HOME = "ipv4:198.51.100.7"  # the account's owner
# Three failures lock; long enough that no lockout runs out while the test looks at it.
POLICY = LockoutPolicy(threshold=3, base_s=3600.0, max_s=3600.0)


def at(source: str, token: str = "") -> tuple[tuple[str, str], ...]:
    metadata = (("x-parley-source", source),)
    return (*metadata, ("authorization", f"Bearer {token}")) if token else metadata


def login(
    auth: auth_pb2_grpc.AuthServiceAsyncStub, username: str, source: str, **extra: str
) -> Awaitable[auth_pb2.LoginResponse]:
    request = auth_pb2.LoginRequest(username=username, password=PASSWORD, **extra)
    return auth.Login(request, metadata=at(source), timeout=TIMEOUT_S)


def wrong_code(app: TOTP) -> str:
    """A code the app shows at no step near now (auth accepts one step either side)."""
    now = int(time.time())
    near = {app.generate(now + d * 30).decode() for d in (-1, 0, 1)}
    return next(c for c in (f"{n:06d}" for n in range(1_000_000)) if c not in near)


def authenticator(secret_base32: str) -> TOTP:
    secret = base64.b32decode(secret_base32 + "=" * (-len(secret_base32) % 8))
    return TOTP(secret, 6, SHA1(), 30)


async def test_wrong_current_passwords_lock_the_thief_not_the_owner(stack: Stack, nats_server: NatsTestServer) -> None:
    await stack.create_user("victim", "member")
    stack.app("auth").lockouts.pair_policy = POLICY
    auth = stack.auth_as_gateway()
    stolen = (await login(auth, "victim", THIEF)).access_token

    change = auth_pb2.ChangePasswordRequest(current_password="not-hers", new_password="another-new-passphrase-88")
    for _ in range(POLICY.threshold):  # the last of these starts the lockout
        code, message = await code_of(auth.ChangePassword(change, metadata=at(THIEF, stolen), timeout=TIMEOUT_S))
        assert (code, message) == (grpc.StatusCode.UNAUTHENTICATED, "the current password is wrong")

    # Locked for this account from the thief's address: even the right password now waits...
    right = auth_pb2.ChangePasswordRequest(current_password=PASSWORD, new_password="an-entirely-new-passphrase-77")
    code, message = await code_of(auth.ChangePassword(right, metadata=at(THIEF, stolen), timeout=TIMEOUT_S))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "from your address" in message
    assert (await code_of(login(auth, "victim", THIEF)))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    # ...while the owner, at home, logs in and changes her password as usual.
    own = (await login(auth, "victim", HOME)).access_token
    assert (await code_of(auth.ChangePassword(right, metadata=at(HOME, own), timeout=TIMEOUT_S)))[0] == (
        grpc.StatusCode.OK
    )

    failed = [r for r in await security_events(nats_server, "step_up_failed") if r.username == "victim"]
    assert len(failed) == 3
    assert {r.source for r in failed} == {THIEF}
    assert all(r.detail.startswith("ChangePassword: the current password is wrong (session ") for r in failed)
    locks = [r for r in await security_events(nats_server, "lockout") if r.username == "victim"]
    assert [(r.source, r.detail.split(" locked")[0]) for r in locks] == [(THIEF, "this account from this address")]


async def test_wrong_totp_codes_at_enrolment_and_regeneration_count_too(
    stack: Stack, nats_server: NatsTestServer
) -> None:
    await stack.create_user("enroller", "member")
    stack.app("auth").lockouts.pair_policy = POLICY
    auth = stack.auth_as_gateway()
    session = await login(auth, "enroller", THIEF)
    token = session.access_token
    begun = await auth.BeginTotpEnrolment(
        auth_pb2.BeginTotpEnrolmentRequest(), metadata=at(THIEF, token), timeout=TIMEOUT_S
    )
    app = authenticator(begun.secret_base32)

    def confirm(totp_code: str) -> object:
        request = auth_pb2.ConfirmTotpEnrolmentRequest(totp_code=totp_code)
        return auth.ConfirmTotpEnrolment(request, metadata=at(THIEF, token), timeout=TIMEOUT_S)

    code, message = await code_of(confirm(wrong_code(app)))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "does not match" in message
    # A right code resets this pair's count; the enrolment is done.
    right = app.generate(int(time.time())).decode()
    assert (await code_of(confirm(right)))[0] == grpc.StatusCode.OK

    def regenerate(**proof: str) -> object:
        request = auth_pb2.RegenerateRecoveryCodesRequest(**proof)
        return auth.RegenerateRecoveryCodes(request, metadata=at(THIEF, token), timeout=TIMEOUT_S)

    assert (await code_of(regenerate(totp_code=wrong_code(app))))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert (await code_of(regenerate(password="not-the-password")))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert (await code_of(regenerate(totp_code=wrong_code(app))))[0] == grpc.StatusCode.UNAUTHENTICATED
    # Three failures since the last success: locked, whatever the proof.
    assert (await code_of(regenerate(password=PASSWORD)))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    next_code = app.generate(int(time.time()) + 30).decode()
    assert (await code_of(login(auth, "enroller", THIEF, totp_code=next_code)))[0] == (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )

    failed = [r for r in await security_events(nats_server, "step_up_failed") if r.username == "enroller"]
    assert [r.detail.split(" (session")[0] for r in failed] == [
        "ConfirmTotpEnrolment: the code does not match; check the authenticator app's clock and try the next code",
        "RegenerateRecoveryCodes: the one-time code is wrong or was already used",
        "RegenerateRecoveryCodes: the password is wrong",
        "RegenerateRecoveryCodes: the one-time code is wrong or was already used",
    ]
    assert {r.source for r in failed} == {THIEF}
    assert {r.actor for r in failed} == {f"user:{session.user_id}"}


async def test_a_burst_of_simultaneous_wrong_current_passwords_checks_none_past_the_lockout(
    stack: Stack, nats_server: NatsTestServer
) -> None:
    """Step-ups share the login's one check at a time per account: current passwords sent at the
    same moment with a stolen session, the right one last, get no more checks than the lockout
    allows, and the right one does not change the password."""
    await stack.create_user("rushed", "member")
    stack.app("auth").lockouts.pair_policy = POLICY
    auth = stack.auth_as_gateway()
    stolen = (await login(auth, "rushed", THIEF)).access_token

    def change(current: str) -> Awaitable[auth_pb2.ChangePasswordResponse]:
        request = auth_pb2.ChangePasswordRequest(current_password=current, new_password="a-thiefs-new-passphrase-99")
        return auth.ChangePassword(request, metadata=at(THIEF, stolen), timeout=TIMEOUT_S)

    answers = await asyncio.gather(*(code_of(change(f"guess-{n}")) for n in range(40)), code_of(change(PASSWORD)))
    codes = [code for code, _ in answers]
    assert 0 < codes.count(grpc.StatusCode.UNAUTHENTICATED) <= POLICY.threshold
    assert set(codes) == {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED}
    # The password is the owner's still: she logs in with it from home.
    assert (await code_of(login(auth, "rushed", HOME)))[0] == grpc.StatusCode.OK
