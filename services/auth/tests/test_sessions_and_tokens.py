"""Refresh-token rotation with reuse detection, forged access tokens, lockout, registration modes."""

from __future__ import annotations

import base64
import json
import time
import uuid

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from parley.auth.v1 import auth_pb2
from parley.messaging.v1 import messaging_pb2, messaging_pb2_grpc

from parley_core.tokens import AUDIENCE, ISSUER
from parley_testing.nats import NatsTestServer
from parley_testing.security import security_events
from parley_testing.stack import PASSWORD, TIMEOUT_S, Stack, bearer
from parley_testing.statuses import code_of

pytestmark = pytest.mark.asyncio


async def test_refresh_rotates_and_a_reused_token_revokes_the_whole_family(
    stack: Stack, nats_server: NatsTestServer
) -> None:
    await stack.create_user("alice", "member")
    login = await stack.login("alice")
    gateway = stack.gateway()

    second = await gateway.Refresh(auth_pb2.RefreshRequest(refresh_token=login.refresh_token), timeout=TIMEOUT_S)
    third = await gateway.Refresh(auth_pb2.RefreshRequest(refresh_token=second.refresh_token), timeout=TIMEOUT_S)
    assert len({login.refresh_token, second.refresh_token, third.refresh_token}) == 3
    assert third.session_id == login.session_id
    listing = gateway.ListMyChannels(
        messaging_pb2.ListMyChannelsRequest(), metadata=bearer(third.access_token), timeout=TIMEOUT_S
    )
    assert (await code_of(listing))[0] == grpc.StatusCode.OK

    # The first token, already traded, comes back: someone copied it.
    code, message = await code_of(
        gateway.Refresh(auth_pb2.RefreshRequest(refresh_token=login.refresh_token), timeout=TIMEOUT_S)
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "already used" in message
    # The whole family is gone: the newest refresh token and the access token too.
    code, _ = await code_of(
        gateway.Refresh(auth_pb2.RefreshRequest(refresh_token=third.refresh_token), timeout=TIMEOUT_S)
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED
    listing = gateway.ListMyChannels(
        messaging_pb2.ListMyChannelsRequest(), metadata=bearer(third.access_token), timeout=TIMEOUT_S
    )
    assert (await code_of(listing))[0] == grpc.StatusCode.UNAUTHENTICATED

    sessions = await gateway.ListSessions(
        auth_pb2.ListSessionsRequest(), metadata=bearer((await stack.login("alice")).access_token), timeout=TIMEOUT_S
    )
    revoked = [s for s in sessions.sessions if s.session_id == login.session_id]
    assert revoked[0].revoked
    assert revoked[0].revoked_reason == "refresh token reuse"
    reuse = await security_events(nats_server, "refresh_token_reuse")
    assert [r.detail for r in reuse] == [login.session_id]


async def test_garbage_refresh_tokens_are_refused(stack: Stack) -> None:
    gateway = stack.gateway()
    for token in ("", "no-dot", "abc.def", "x" * 500, f"{uuid.uuid4().hex}.whatever"):
        code, _ = await code_of(gateway.Refresh(auth_pb2.RefreshRequest(refresh_token=token), timeout=TIMEOUT_S))
        assert code == grpc.StatusCode.UNAUTHENTICATED, token


def _forge(claims: dict[str, object], key: Ed25519PrivateKey, kid: str, alg: str = "EdDSA") -> str:
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


async def test_tampered_expired_wrong_key_and_wrong_algorithm_tokens_are_refused(stack: Stack) -> None:
    await stack.create_user("mallory", "member")
    login = await stack.login("mallory")
    messaging = messaging_pb2_grpc.MessagingServiceStub(stack.internal("messaging"))

    async def status(token: str) -> grpc.StatusCode:
        call = messaging.ListMyChannels(
            messaging_pb2.ListMyChannelsRequest(), metadata=bearer(token), timeout=TIMEOUT_S
        )
        return (await code_of(call))[0]

    assert await status(login.access_token) == grpc.StatusCode.OK
    header = jwt.get_unverified_header(login.access_token)
    claims = jwt.decode(login.access_token, options={"verify_signature": False})
    pem = (stack.data_dir / "secrets" / "auth-signing-key.pem").read_bytes()
    real_key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(real_key, Ed25519PrivateKey)

    # Tampered: the payload says owner, the signature is the original one.
    head, _body, signature = login.access_token.split(".")
    raised = {**claims, "role": "owner", "sub": "someone-else"}
    forged_body = base64.urlsafe_b64encode(json.dumps(raised).encode()).rstrip(b"=").decode()
    tampered = f"{head}.{forged_body}.{signature}"
    # Expired: signed by the real key, but its time is up.
    now = int(time.time())
    expired = _forge({**claims, "iat": now - 3600, "exp": now - 60}, real_key, header["kid"])
    # Wrong key, claiming the real key's id.
    wrong_key = _forge(claims, Ed25519PrivateKey.generate(), header["kid"])
    # Wrong algorithm: HMAC keyed with the public key, the classic confusion attack, and "none".
    public_raw = real_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    hmac_token = jwt.encode(claims, public_raw, algorithm="HS256", headers={"kid": header["kid"]})
    none_token = jwt.encode(claims, None, algorithm="none", headers={"kid": header["kid"]})
    # Right key, wrong audience / issuer.
    wrong_audience = _forge({**claims, "aud": "elsewhere"}, real_key, header["kid"])
    wrong_issuer = _forge({**claims, "iss": "evil"}, real_key, header["kid"])
    for name, token in (
        ("tampered", tampered),
        ("expired", expired),
        ("wrong key", wrong_key),
        ("HS256", hmac_token),
        ("none", none_token),
        ("audience", wrong_audience),
        ("issuer", wrong_issuer),
        ("garbage", "not-a-token"),
    ):
        assert await status(token) == grpc.StatusCode.UNAUTHENTICATED, name
    assert claims["iss"] == ISSUER
    assert claims["aud"] == AUDIENCE
    assert claims["exp"] - claims["iat"] <= 15 * 60


async def test_lockout_engages_per_account_and_releases(stack: Stack, nats_server: NatsTestServer) -> None:
    await stack.create_user("victim", "member")
    auth = stack.app("auth")
    # Frozen while the failures land (they are counted at their real time, a little later), so
    # the lockout cannot run out before the test looks; moved past it to release.
    frozen = [time.time()]
    auth.lockouts.clock = lambda: frozen[0]
    for _ in range(auth.lockouts.pair_policy.threshold - 1):
        code, _ = await code_of(stack.login("victim", "wrong-password-here"))
        assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = await code_of(stack.login("victim", "wrong-password-here"))
    assert code == grpc.StatusCode.UNAUTHENTICATED  # this failure starts the lockout
    code, message = await code_of(stack.login("victim"))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED  # even the right password waits
    assert "try again in" in message
    # An unknown name is locked out the same way (no enumeration through lockouts).
    for _ in range(auth.lockouts.pair_policy.threshold):
        await code_of(stack.login("nobody-here", "wrong-password-here"))
    assert (await code_of(stack.login("nobody-here", "wrong-password-here")))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED

    frozen[0] = time.time() + auth.lockouts.pair_policy.base_s + 0.1
    assert (await code_of(stack.login("victim")))[0] == grpc.StatusCode.OK
    lockouts = await security_events(nats_server, "lockout")
    # The unknown name is recorded as a keyed digest: it may be a password typed in the wrong field.
    [unknown] = {r.username for r in lockouts} - {"victim"}
    assert unknown.startswith("unknown-name:")
    assert "nobody-here" not in unknown
    assert all(r.locked_until_unix > 0 for r in lockouts)
    failed = await security_events(nats_server, "login_failed")
    assert len(failed) >= 2 * auth.lockouts.pair_policy.threshold


async def test_login_does_not_tell_unknown_users_from_wrong_passwords(stack: Stack) -> None:
    await stack.create_user("dave", "member")
    timings: dict[str, float] = {}
    answers: set[tuple[grpc.StatusCode, str]] = set()
    for name in ("dave", "no-such-user"):
        started = time.perf_counter()
        answers.add(await code_of(stack.login(name, "wrong-password-here")))
        timings[name] = time.perf_counter() - started
    assert answers == {(grpc.StatusCode.UNAUTHENTICATED, "username or password is wrong")}
    print(
        f"\n[enumeration] wrong password {timings['dave'] * 1000:.0f} ms, "
        f"unknown user {timings['no-such-user'] * 1000:.0f} ms"
    )


async def test_admin_registration_mode_refuses_self_registration(closed_stack: Stack) -> None:
    gateway = closed_stack.gateway()
    code, message = await code_of(
        gateway.Register(auth_pb2.RegisterRequest(username="eve", password=PASSWORD), timeout=TIMEOUT_S)
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "administrator" in message
    owner = await closed_stack.create_user("root", "owner")
    assert owner.role == "owner"
    owner_md = bearer((await closed_stack.login("root")).access_token)
    created = await gateway.CreateUser(
        auth_pb2.CreateUserRequest(username="eve", password=PASSWORD), metadata=owner_md, timeout=TIMEOUT_S
    )
    assert created.role == "member"
    assert (await closed_stack.login("eve")).role == "member"


async def test_password_policy_and_change_password(stack: Stack) -> None:
    gateway = stack.gateway()
    for weak in ("password123456", "qwertyuiopasdf", "frank-the-frank-1"):
        code, _ = await code_of(
            gateway.Register(auth_pb2.RegisterRequest(username="frank", password=weak), timeout=TIMEOUT_S)
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT, weak
    await gateway.Register(auth_pb2.RegisterRequest(username="frank", password=PASSWORD), timeout=TIMEOUT_S)
    first = await stack.login("frank")
    second = await stack.login("frank")
    new_password = "violet orbit lantern 42"
    wrong = gateway.ChangePassword(
        auth_pb2.ChangePasswordRequest(current_password="not-it-at-all", new_password=new_password),
        metadata=bearer(first.access_token),
        timeout=TIMEOUT_S,
    )
    assert (await code_of(wrong))[0] == grpc.StatusCode.UNAUTHENTICATED
    await gateway.ChangePassword(
        auth_pb2.ChangePasswordRequest(current_password=PASSWORD, new_password=new_password),
        metadata=bearer(first.access_token),
        timeout=TIMEOUT_S,
    )
    assert (await code_of(stack.login("frank")))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert (await code_of(stack.login("frank", new_password)))[0] == grpc.StatusCode.OK
    # Other sessions end with a password change; the one that changed it stays.
    other = gateway.Refresh(auth_pb2.RefreshRequest(refresh_token=second.refresh_token), timeout=TIMEOUT_S)
    assert (await code_of(other))[0] == grpc.StatusCode.UNAUTHENTICATED
    mine = gateway.Refresh(auth_pb2.RefreshRequest(refresh_token=first.refresh_token), timeout=TIMEOUT_S)
    assert (await code_of(mine))[0] == grpc.StatusCode.OK


async def test_users_see_only_their_own_sessions_and_admins_any(stack: Stack) -> None:
    await stack.create_user("admin1", "admin")
    gina = await stack.create_user("gina", "member")
    hank = await stack.create_user("hank", "member")
    gina_login = await stack.login("gina")
    hank_login = await stack.login("hank")
    admin_md = bearer((await stack.login("admin1")).access_token)
    gateway = stack.gateway()

    peek = gateway.ListSessions(
        auth_pb2.ListSessionsRequest(user_id=hank.user_id), metadata=bearer(gina_login.access_token), timeout=TIMEOUT_S
    )
    assert (await code_of(peek))[0] == grpc.StatusCode.PERMISSION_DENIED
    kill = gateway.RevokeSession(
        auth_pb2.RevokeSessionRequest(session_id=hank_login.session_id),
        metadata=bearer(gina_login.access_token),
        timeout=TIMEOUT_S,
    )
    assert (await code_of(kill))[0] == grpc.StatusCode.PERMISSION_DENIED
    listed = await gateway.ListSessions(
        auth_pb2.ListSessionsRequest(user_id=hank.user_id), metadata=admin_md, timeout=TIMEOUT_S
    )
    assert [s.session_id for s in listed.sessions] == [hank_login.session_id]
    await gateway.RevokeSession(
        auth_pb2.RevokeSessionRequest(session_id=hank_login.session_id), metadata=admin_md, timeout=TIMEOUT_S
    )
    listed = await gateway.ListSessions(
        auth_pb2.ListSessionsRequest(user_id=hank.user_id), metadata=admin_md, timeout=TIMEOUT_S
    )
    assert listed.sessions[0].revoked
    # An admin may not make someone an owner; an owner may.
    promote = gateway.AssignRole(
        auth_pb2.AssignRoleRequest(user_id=gina.user_id, role="owner"), metadata=admin_md, timeout=TIMEOUT_S
    )
    assert (await code_of(promote))[0] == grpc.StatusCode.PERMISSION_DENIED
    bad_role = gateway.AssignRole(
        auth_pb2.AssignRoleRequest(user_id=gina.user_id, role="superuser"), metadata=admin_md, timeout=TIMEOUT_S
    )
    assert (await code_of(bad_role))[0] == grpc.StatusCode.INVALID_ARGUMENT
