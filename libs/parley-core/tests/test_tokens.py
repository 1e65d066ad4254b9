"""Token verification, including the verified-token cache that `make bench`'s profile asked for."""

from __future__ import annotations

import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from google.protobuf.message import Message
from parley.auth.v1.events_pb2 import (
    AccountDisabled,
    AccountEnabled,
    AccountErased,
    MfaRequirementSet,
    RoleAssigned,
    SessionRevoked,
    SessionStepUpRequired,
    SigningKeyPublished,
    UserRegistered,
)

from parley_core.access import AccessProjection
from parley_core.actor import Actor
from parley_core.bus_events import ReceivedEvent
from parley_core.envelope import NewEvent, seal
from parley_core.errors import PermissionDenied, Unauthenticated
from parley_core.rbac import Permission
from parley_core.tokens import ALGORITHM, AUDIENCE, ISSUER, Caller, TokenVerifier
from parley_testing.clock import ManualClock


def issue(key: Ed25519PrivateKey, *, kid: str, expires_at: float, sub: str = "user-1", sid: str = "") -> str:
    claims: dict[str, object] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "name": "alice",
        "jti": uuid.uuid4().hex,
        "iat": int(expires_at) - 900,
        "exp": int(expires_at),
    }
    if sid:
        claims["sid"] = sid
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid})


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def verifier_for(key: Ed25519PrivateKey, clock: ManualClock, access: AccessProjection | None = None) -> TokenVerifier:
    verifier = TokenVerifier(access, clock=clock)
    verifier.add_key("k1", key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    return verifier


def verifier_and_token(
    key: Ed25519PrivateKey, access: AccessProjection | None = None, *, sid: str = ""
) -> tuple[ManualClock, TokenVerifier, str]:
    """The clock, a verifier of `key` as k1 (over `access`), and a token of user-1's that `key`
    signed as k1, valid for a minute."""
    clock = ManualClock(time.time())
    return clock, verifier_for(key, clock, access), issue(key, kid="k1", expires_at=clock.now + 60, sid=sid)


def test_a_remembered_token_still_expires_on_time(key: Ed25519PrivateKey) -> None:
    clock, verifier, token = verifier_and_token(key)
    assert verifier.verify(token).user_id == "user-1"
    assert verifier.verify(token).username == "alice"  # served from the cache
    clock.now += 61
    with pytest.raises(Unauthenticated, match="expired"):
        verifier.verify(token)


def test_a_tampered_copy_of_a_remembered_token_is_refused(key: Ed25519PrivateKey) -> None:
    _, verifier, token = verifier_and_token(key)
    verifier.verify(token)
    head, payload, signature = token.split(".")
    tampered = ".".join((head, payload, ("A" if signature[0] != "A" else "B") + signature[1:]))
    with pytest.raises(Unauthenticated, match="invalid"):
        verifier.verify(tampered)


def test_a_token_of_another_key_is_refused(key: Ed25519PrivateKey) -> None:
    clock = ManualClock(time.time())
    verifier = verifier_for(key, clock)
    stranger = Ed25519PrivateKey.generate()
    with pytest.raises(Unauthenticated, match="invalid"):
        verifier.verify(issue(stranger, kid="k1", expires_at=clock.now + 60))
    with pytest.raises(Unauthenticated, match="unknown or retired key"):
        verifier.verify(issue(stranger, kid="k2", expires_at=clock.now + 60))


@pytest.mark.parametrize(
    ("withdrawn", "refusal"),
    [
        (SessionRevoked(session_id="session-1", user_id="user-1", reason="logout"), "revoked"),
        (AccountDisabled(user_id="user-1", reason="left"), "disabled"),
    ],
    ids=["session revoked", "account disabled"],
)
def test_a_remembered_token_is_refused_once_its_access_is_withdrawn(
    key: Ed25519PrivateKey, withdrawn: Message, refusal: str
) -> None:
    access = AccessProjection()
    _, verifier, token = verifier_and_token(key, access, sid="session-1")
    verifier.verify(token)
    access.apply_payload(withdrawn, 1)
    with pytest.raises(Unauthenticated, match=refusal):
        verifier.verify(token)


def test_a_remembered_token_carries_the_current_role(key: Ed25519PrivateKey) -> None:
    access = AccessProjection()
    access.apply_payload(UserRegistered(user_id="user-1", username="alice", role="admin"), 1)
    _, verifier, token = verifier_and_token(key, access)
    assert verifier.verify(token).role == "admin"
    access.apply_payload(RoleAssigned(user_id="user-1", role="guest", previous_role="admin"), 2)
    assert verifier.verify(token).role == "guest"


def test_retiring_a_key_drops_the_tokens_it_signed_from_the_cache(key: Ed25519PrivateKey) -> None:
    _, verifier, token = verifier_and_token(key)
    verifier.verify(token)
    verifier.retire_key("k1")
    with pytest.raises(Unauthenticated, match="retired"):
        verifier.verify(token)


def test_a_remembered_caller_is_looked_up_afresh_after_each_access_event(key: Ed25519PrivateKey) -> None:
    """The caller a token made is remembered until the access projection applies an event; every
    event that may withdraw access is then seen on the very next call."""
    access = AccessProjection()
    access.apply_payload(UserRegistered(user_id="user-1", username="alice", role="admin"), 1)
    _, verifier, token = verifier_and_token(key, access, sid="session-1")
    first = verifier.verify(token)
    assert verifier.verify(token) is first  # remembered while nothing changed
    access.apply_payload(MfaRequirementSet(role="admin", required=True), 2)
    assert verifier.verify(token).mfa_pending
    access.apply_payload(MfaRequirementSet(role="admin", required=False), 3)
    assert not verifier.verify(token).mfa_pending
    access.apply_payload(SessionStepUpRequired(session_id="session-1", user_id="user-1"), 4)
    with pytest.raises(PermissionDenied, match="prove it is yours"):
        verifier.verify(token).require(Permission.CHANNELS_CREATE)
    access.apply_payload(AccountErased(user_id="user-1"), 5)
    with pytest.raises(Unauthenticated, match="erased"):
        verifier.verify(token)


def test_a_refused_caller_is_not_remembered(key: Ed25519PrivateKey) -> None:
    access = AccessProjection()
    _, verifier, token = verifier_and_token(key, access)
    verifier.verify(token)
    access.apply_payload(AccountDisabled(user_id="user-1", reason="left"), 1)
    for _ in range(2):  # refused again, not from a remembered refusal or the caller before it
        with pytest.raises(Unauthenticated, match="disabled"):
            verifier.verify(token)
    access.apply_payload(AccountEnabled(user_id="user-1"), 2)
    assert verifier.verify(token).user_id == "user-1"


def test_a_remembered_caller_still_expires_on_time(key: Ed25519PrivateKey) -> None:
    clock, verifier, token = verifier_and_token(key)
    verifier.verify(token)
    verifier.verify(token)
    clock.now += 60  # exactly at `exp`: no longer valid
    with pytest.raises(Unauthenticated, match="expired"):
        verifier.verify(token)


def test_a_refusal_names_the_roles_that_hold_the_permission() -> None:
    guest = Caller(user_id="user-1", role="guest", token_id="t", username="gina")
    with pytest.raises(PermissionDenied) as refused:
        guest.require(Permission.CHANNELS_CREATE, what="CreateChannel")
    assert str(refused.value) == (
        "CreateChannel needs the channels.create permission, held by owner, admin and member; you are guest"
    )
    member = Caller(user_id="user-2", role="member", token_id="t", username="mo")
    with pytest.raises(PermissionDenied, match="held by owner; you are member"):
        member.require(Permission.SIGNING_KEYS)


def _key_event(key_id: str, public_key: bytes, seq: int) -> ReceivedEvent:
    payload = SigningKeyPublished(key_id=key_id, algorithm=ALGORITHM, public_key=public_key)
    event = NewEvent(aggregate_type="signing_key", aggregate_id=key_id, payload=payload, actor=Actor.service("auth"))
    envelope = seal(event, aggregate_version=1, producer="auth@test", trace_context={})
    return ReceivedEvent(envelope, f"parley.auth.key.{key_id}", "AUTH", seq, 1, {})


async def test_a_published_key_that_is_no_ed25519_key_is_ignored_not_raised(key: Ed25519PrivateKey) -> None:
    """Red-team re-check: raised, it would halt every service's AUTH projection for good."""
    verifier = TokenVerifier(clock=ManualClock(time.time()))
    await verifier.apply(_key_event("short", b"\x01", 1))
    await verifier.apply(_key_event("k1", key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw), 2))
    assert not verifier.knows_key("short")
    assert verifier.knows_key("k1")
