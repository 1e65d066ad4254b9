"""Scheduled signing-key rotation: a successor is published on schedule, the replaced key keeps
verifying the tokens it signed, and is retired once the last of them has expired."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import pytest_asyncio
from parley.auth.v1.events_pb2 import SigningKeyRetired
from parley.messaging.v1 import messaging_pb2

from parley_auth.key_rotation import RETIRE_MARGIN_S
from parley_auth.signing import TokenIssuer
from parley_core.envelope import decode, open_payload
from parley_core.pki import Pki
from parley_testing.nats import NatsTestServer
from parley_testing.security import security_events
from parley_testing.stack import TIMEOUT_S, Stack, bearer, start_service, start_stack, stop_stack
from parley_testing.waiting import eventually, until

pytestmark = pytest.mark.asyncio

ROTATION_S = 2
TOKEN_S = 15  # long enough that a token is still valid when the test uses it after a rotation


@pytest_asyncio.fixture
async def rotating_stack(
    nats_server: NatsTestServer, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Stack]:
    monkeypatch.setenv("PARLEY_AUTH_SIGNING_KEY_ROTATION_SECONDS", str(ROTATION_S))
    monkeypatch.setenv("PARLEY_AUTH_ACCESS_TOKEN_SECONDS", str(TOKEN_S))
    started, running = await start_stack(nats_server, pki, tmp_path, registration="open")
    try:
        yield started
    finally:
        await stop_stack(started, running)


async def retired_at(stack: Stack, key_id: str) -> float | None:
    """When the SigningKeyRetired event of `key_id` was appended, if it was."""
    ctx = stack.apps["auth"].ctx
    assert ctx is not None
    try:
        raw = await ctx.bus.js.get_last_msg("AUTH", f"parley.auth.key.{key_id}")
    except Exception:
        return None
    envelope = decode(raw.data or b"")
    if not isinstance(open_payload(envelope), SigningKeyRetired):
        return None
    return envelope.occurred_at.ToNanoseconds() / 1e9


async def test_the_key_rotates_on_schedule_and_retires_after_its_last_token(
    rotating_stack: Stack, nats_server: NatsTestServer
) -> None:
    stack = rotating_stack
    auth = stack.app("auth")
    messaging = stack.apps["messaging"].ctx
    assert messaging is not None
    await stack.create_user("alice", "member")
    login = await stack.login("alice")
    old_key = jwt.get_unverified_header(login.access_token)["kid"]
    expires = jwt.decode(login.access_token, options={"verify_signature": False})["exp"]

    async def successor() -> str | None:
        return next((k for k, s in auth.signing_keys.items() if s.replaces == old_key), None)

    new_key = await eventually(successor, "the scheduled rotation", TIMEOUT_S)
    assert auth.signing_keys[new_key].published_at >= auth.signing_keys[old_key].published_at + ROTATION_S
    assert not auth.signing_keys[old_key].retired
    # After the rotation the old key's token is still good at another service (messaging)...
    await stack.gateway().ListMyChannels(
        messaging_pb2.ListMyChannelsRequest(), metadata=bearer(login.access_token), timeout=TIMEOUT_S
    )
    # ...while new logins are signed with a newer key.
    later = await stack.login("alice")
    assert jwt.get_unverified_header(later.access_token)["kid"] != old_key

    await until(
        lambda: auth.signing_keys[old_key].retired,
        "the old key retired",
        TOKEN_S + ROTATION_S + RETIRE_MARGIN_S + TIMEOUT_S,
    )
    at = await retired_at(stack, old_key)
    assert at is not None
    assert at >= expires  # not one token it signed was still valid
    await until(lambda: not messaging.tokens.knows_key(old_key), "messaging dropping the retired key", TIMEOUT_S)
    assert messaging.tokens.knows_key(jwt.get_unverified_header(later.access_token)["kid"])
    rotated = [r for r in await security_events(nats_server, "signing_key_rotated") if r.actor == "service:auth"]
    assert any(r.detail == f"{old_key} -> {new_key}" for r in rotated)


async def two_rotations_as_one(first: Any, other: Any) -> None:
    """Two rotations in a row, each contested by both auth instances: every key gets one
    successor at most, and both end up signing with the same key."""
    start = first.signing_key_id

    def successors(key_id: str) -> list[str]:
        return [k for k, s in first.signing_keys.items() if s.replaces == key_id]

    await until(lambda: any(successors(k) for k in successors(start)), "two rotations", TIMEOUT_S)
    for key_id in list(first.signing_keys):
        assert len(successors(key_id)) <= 1, f"{key_id} has successors {successors(key_id)}"
    await until(lambda: first.signing_key_id == other.signing_key_id, "both signing with one key", TIMEOUT_S)


async def test_two_instances_rotate_once_and_sign_with_the_same_successor(
    rotating_stack: Stack, nats_server: NatsTestServer
) -> None:
    """Their schedule is the same (it comes from the AUTH stream), so both try at once: one
    publishes the successor, the other adopts it from the shared secrets folder."""
    stack = rotating_stack
    first = stack.app("auth")
    second = await start_service(stack, nats_server, "auth", registration="open")
    try:
        other = second.app.app
        assert other.signing_key_id == first.signing_key_id  # one secrets folder, one key
        await two_rotations_as_one(first, other)
        await until(lambda: other.signing_keys.keys() == first.signing_keys.keys(), "one view of the keys", TIMEOUT_S)
    finally:
        await second.shutdown()


AUTH_HOST_SECRETS = ("auth-mfa-key.bin", "auth-audit-key.pem", "auth-signing-key.pem")


def another_host(stack: Stack, root: Path) -> Path:
    """A second host's data folder as `parley host join` makes it: certificates and a copy of
    auth's keys as they were when the bundle was made, no folder shared with the first host."""
    shutil.copytree(stack.data_dir / "pki", root / "pki")
    (root / "secrets").mkdir(mode=0o700)
    for name in AUTH_HOST_SECRETS:
        shutil.copy2(stack.data_dir / "secrets" / name, root / "secrets" / name)
    return root


async def test_an_instance_on_another_host_signs_with_the_successor_it_did_not_publish(
    rotating_stack: Stack, nats_server: NatsTestServer, tmp_path: Path
) -> None:
    """Two hosts' auth instances rotate on the same schedule without sharing a secrets folder:
    the winner's successor carries its private key sealed under the sealing key both hold, so
    the other instance signs with it instead of publishing a second successor of its own."""
    stack = rotating_stack
    first = stack.app("auth")
    folder = another_host(stack, tmp_path / "host-b")
    second = await start_service(stack, nats_server, "auth", registration="open", data_dir=folder)
    try:
        other = second.app.app
        assert other.signing_key_id == first.signing_key_id  # the bundle's copy of the key in use
        await two_rotations_as_one(first, other)
        # The adopted key is in the other host's own folder, for its next start.
        assert TokenIssuer.load(folder / "secrets" / "auth-signing-key.pem").key_id == other.signing_key_id
    finally:
        await second.shutdown()


@pytest.mark.slow  # `make test-all`, to keep make test within 15 minutes; the scheduled rotation stays in make test
async def test_a_log_whose_key_in_use_is_not_in_the_secrets_folder_replaces_it_and_retires_it(
    nats_server: NatsTestServer, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder restored from a backup (or one that lost auth-signing-key.pem): the new key takes
    over from the log's key in use, which verifies its tokens until they expire and is then
    retired, instead of staying trusted for ever without anyone holding its private key here."""
    # Long enough that the old token outlives a restart of the stack on a loaded machine.
    monkeypatch.setenv("PARLEY_AUTH_ACCESS_TOKEN_SECONDS", str(TOKEN_S))
    stack, running = await start_stack(nats_server, pki, tmp_path, registration="open")
    try:
        await stack.create_user("alice", "member")
        old_token = (await stack.login("alice")).access_token
        old_key = stack.app("auth").signing_key_id
    finally:
        await stop_stack(stack, running)
    (tmp_path / "data" / "secrets" / "auth-signing-key.pem").unlink()

    stack, running = await start_stack(nats_server, pki, tmp_path, registration="open")
    try:
        auth = stack.app("auth")
        new_key = auth.signing_key_id
        assert new_key != old_key
        assert auth.signing_keys[new_key].replaces == old_key
        await stack.gateway().ListMyChannels(  # the old key's token is good until it expires
            messaging_pb2.ListMyChannelsRequest(), metadata=bearer(old_token), timeout=TIMEOUT_S
        )
        await until(
            lambda: auth.signing_keys[old_key].retired,
            "the replaced key retired",
            TOKEN_S + RETIRE_MARGIN_S + TIMEOUT_S,
        )
        replaced = await security_events(nats_server, "signing_key_replaced")
        assert [r.detail.split(":")[0] for r in replaced] == [f"{old_key} -> {new_key}"]
    finally:
        await stop_stack(stack, running)
