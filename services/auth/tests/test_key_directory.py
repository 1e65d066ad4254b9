"""The E2EE key directory with real Olm keys from vodozemac: publish, upload, claim once, list."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import grpc
import vodozemac
from parley.auth.v1 import auth_pb2
from parley.auth.v1.events_pb2 import UploadedOneTimeKey
from parley.gateway.v1 import gateway_pb2_grpc

from parley_auth.keys import device_message, one_time_key_message
from parley_testing.stack import TIMEOUT_S, Stack, bearer
from parley_testing.statuses import status_code

CLAIMERS = 12
KEYS = 8


def raw(key: vodozemac.Curve25519PublicKey | vodozemac.Ed25519PublicKey) -> bytes:
    text = key.to_base64()
    return base64.b64decode(text + "=" * (-len(text) % 4))


def signature(account: vodozemac.Account, message: bytes) -> bytes:
    text = account.sign(message).to_base64()
    return base64.b64decode(text + "=" * (-len(text) % 4))


async def alice_and_bob(stack: Stack) -> tuple[auth_pb2.Account, tuple[tuple[str, str]], tuple[tuple[str, str]]]:
    """Two members, logged in: alice's account and both callers' metadata."""
    alice = await stack.create_user("alice", "member")
    await stack.create_user("bob", "member")
    return alice, bearer((await stack.login("alice")).access_token), bearer((await stack.login("bob")).access_token)


def publish_request(account: vodozemac.Account, user_id: str, device_id: str) -> auth_pb2.PublishDeviceKeysRequest:
    curve, ed = raw(account.curve25519_key), raw(account.ed25519_key)
    return auth_pb2.PublishDeviceKeysRequest(
        device_id=device_id,
        curve25519=curve,
        ed25519=ed,
        signature=signature(account, device_message(user_id, device_id, curve, ed)),
        display_name="laptop",
    )


def one_time_keys(account: vodozemac.Account, user_id: str, device_id: str, n: int) -> list[UploadedOneTimeKey]:
    account.generate_one_time_keys(n)
    found = []
    for key_id, key in account.one_time_keys.items():
        message = one_time_key_message(user_id, device_id, key_id, raw(key))
        found.append(UploadedOneTimeKey(key_id=key_id, key=raw(key), signature=signature(account, message)))
    account.mark_keys_as_published()
    return found


async def publish_with_keys(
    gateway: gateway_pb2_grpc.GatewayAsyncStub,
    account: vodozemac.Account,
    user_id: str,
    device_id: str,
    keys: int,
    *,
    metadata: tuple[tuple[str, str]],
) -> None:
    """The device published, with `keys` one-time keys to claim."""
    await gateway.PublishDeviceKeys(publish_request(account, user_id, device_id), metadata=metadata)
    upload = auth_pb2.UploadOneTimeKeysRequest(
        device_id=device_id, keys=one_time_keys(account, user_id, device_id, keys)
    )
    await gateway.UploadOneTimeKeys(upload, metadata=metadata, timeout=TIMEOUT_S)


async def test_each_one_time_key_is_claimed_exactly_once_under_concurrency(stack: Stack) -> None:
    alice, alice_md, bob_md = await alice_and_bob(stack)
    gateway = stack.gateway()
    account = vodozemac.Account()

    device = await gateway.PublishDeviceKeys(
        publish_request(account, alice.user_id, "LAPTOP1"), metadata=alice_md, timeout=TIMEOUT_S
    )
    assert device.curve25519 == raw(account.curve25519_key)
    uploaded = one_time_keys(account, alice.user_id, "LAPTOP1", KEYS)
    left = await gateway.UploadOneTimeKeys(
        auth_pb2.UploadOneTimeKeysRequest(device_id="LAPTOP1", keys=uploaded), metadata=alice_md, timeout=TIMEOUT_S
    )
    assert left.one_time_keys_left == KEYS

    async def claim() -> str | grpc.StatusCode:
        try:
            got = await stack.gateway().ClaimOneTimeKey(
                auth_pb2.ClaimOneTimeKeyRequest(user_id=alice.user_id, device_id="LAPTOP1"),
                metadata=bob_md,
                timeout=TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return got.one_time_key.key_id

    results = await asyncio.gather(*(claim() for _ in range(CLAIMERS)))
    claimed = [r for r in results if isinstance(r, str)]
    assert sorted(claimed) == sorted(k.key_id for k in uploaded)  # every key once, none twice
    assert [r for r in results if not isinstance(r, str)] == [grpc.StatusCode.FAILED_PRECONDITION] * (CLAIMERS - KEYS)

    listed = await gateway.ListDevices(
        auth_pb2.ListDevicesRequest(user_id=alice.user_id), metadata=bob_md, timeout=TIMEOUT_S
    )
    assert [(d.device_id, d.one_time_keys_left) for d in listed.devices] == [("LAPTOP1", 0)]


async def test_a_claimed_key_starts_a_working_olm_session(stack: Stack) -> None:
    alice, alice_md, bob_md = await alice_and_bob(stack)
    gateway = stack.gateway()
    alice_device = vodozemac.Account()
    await publish_with_keys(gateway, alice_device, alice.user_id, "PHONE", 1, metadata=alice_md)
    claimed = await gateway.ClaimOneTimeKey(
        auth_pb2.ClaimOneTimeKeyRequest(user_id=alice.user_id, device_id="PHONE"), metadata=bob_md, timeout=TIMEOUT_S
    )
    bob_device = vodozemac.Account()
    identity = vodozemac.Curve25519PublicKey.from_bytes(claimed.device.curve25519)
    one_time = vodozemac.Curve25519PublicKey.from_bytes(claimed.one_time_key.key)
    outbound = bob_device.create_outbound_session(identity, one_time)
    message = outbound.encrypt(b"hello alice")
    _session, plaintext = alice_device.create_inbound_session(bob_device.curve25519_key, message.to_pre_key())
    assert plaintext == b"hello alice"


async def test_bad_keys_are_refused_with_reasons(stack: Stack) -> None:
    alice = await stack.create_user("alice", "member")
    alice_md = bearer((await stack.login("alice")).access_token)
    gateway = stack.gateway()
    account = vodozemac.Account()
    code = status_code
    good = publish_request(account, alice.user_id, "DESK")
    for broken in (
        auth_pb2.PublishDeviceKeysRequest(device_id="bad id!", curve25519=good.curve25519, ed25519=good.ed25519),
        auth_pb2.PublishDeviceKeysRequest(device_id="DESK", curve25519=b"short", ed25519=good.ed25519),
        auth_pb2.PublishDeviceKeysRequest(
            device_id="DESK", curve25519=good.curve25519, ed25519=good.ed25519, signature=bytes(64)
        ),
        # Signed for another user: a device cannot be replayed into someone else's account.
        publish_request(account, "someone-else", "DESK"),
    ):
        assert await code(gateway.PublishDeviceKeys(broken, metadata=alice_md, timeout=TIMEOUT_S)) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
    await gateway.PublishDeviceKeys(good, metadata=alice_md, timeout=TIMEOUT_S)
    other = vodozemac.Account()
    assert (
        await code(
            gateway.PublishDeviceKeys(
                publish_request(other, alice.user_id, "DESK"), metadata=alice_md, timeout=TIMEOUT_S
            )
        )
        == grpc.StatusCode.ALREADY_EXISTS
    )
    # One-time keys signed by another device's key are refused.
    forged = one_time_keys(other, alice.user_id, "DESK", 1)
    upload = gateway.UploadOneTimeKeys(
        auth_pb2.UploadOneTimeKeysRequest(device_id="DESK", keys=forged), metadata=alice_md, timeout=TIMEOUT_S
    )
    assert await code(upload) == grpc.StatusCode.INVALID_ARGUMENT
    missing = gateway.ClaimOneTimeKey(
        auth_pb2.ClaimOneTimeKeyRequest(user_id=alice.user_id, device_id="NOPE"), metadata=alice_md, timeout=TIMEOUT_S
    )
    assert await code(missing) == grpc.StatusCode.NOT_FOUND


def signed_fallback(account: vodozemac.Account, user_id: str, device_id: str) -> UploadedOneTimeKey:
    holder: Any = account  # vodozemac's stubs lack the fallback-key API
    holder.generate_fallback_key()
    ((key_id, key),) = holder.fallback_key.items()
    key_id = f"fb_{key_id}"
    message = one_time_key_message(user_id, device_id, key_id, raw(key))
    holder.mark_keys_as_published()
    return UploadedOneTimeKey(key_id=key_id, key=raw(key), signature=signature(account, message))


async def test_fallback_key_is_handed_out_when_one_time_keys_run_out(stack: Stack) -> None:
    alice, alice_md, bob_md = await alice_and_bob(stack)
    gateway = stack.gateway()
    device = vodozemac.Account()
    await gateway.PublishDeviceKeys(publish_request(device, alice.user_id, "TAB"), metadata=alice_md)
    claim = auth_pb2.ClaimOneTimeKeyRequest(user_id=alice.user_id, device_id="TAB")
    # No keys at all: a precise refusal, not a crash.
    assert await status_code(gateway.ClaimOneTimeKey(claim, metadata=bob_md, timeout=TIMEOUT_S)) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    fallback = signed_fallback(device, alice.user_id, "TAB")
    await gateway.UploadOneTimeKeys(
        auth_pb2.UploadOneTimeKeysRequest(
            device_id="TAB", keys=one_time_keys(device, alice.user_id, "TAB", 1), fallback_key=fallback
        ),
        metadata=alice_md,
        timeout=TIMEOUT_S,
    )
    first = await gateway.ClaimOneTimeKey(claim, metadata=bob_md, timeout=TIMEOUT_S)
    assert not first.fallback
    assert first.one_time_key.key_id != fallback.key_id
    # One-time keys gone: the fallback key, again and again, and it opens a working Olm session.
    for _ in range(2):
        again = await gateway.ClaimOneTimeKey(claim, metadata=bob_md, timeout=TIMEOUT_S)
        assert again.fallback
        assert again.one_time_key.key == fallback.key
    bob_device = vodozemac.Account()
    outbound = bob_device.create_outbound_session(
        vodozemac.Curve25519PublicKey.from_bytes(again.device.curve25519),
        vodozemac.Curve25519PublicKey.from_bytes(again.one_time_key.key),
    )
    _session, plaintext = device.create_inbound_session(
        bob_device.curve25519_key, outbound.encrypt(b"via fallback").to_pre_key()
    )
    assert plaintext == b"via fallback"


async def test_owner_removes_a_device_and_its_keys_go(stack: Stack) -> None:
    alice, alice_md, bob_md = await alice_and_bob(stack)
    gateway = stack.gateway()
    device = vodozemac.Account()
    await publish_with_keys(gateway, device, alice.user_id, "OLD", 3, metadata=alice_md)
    remove = auth_pb2.RemoveDeviceRequest(device_id="OLD")
    # Only the owner: for bob, alice's device is not one of his.
    assert (
        await status_code(gateway.RemoveDevice(remove, metadata=bob_md, timeout=TIMEOUT_S)) == grpc.StatusCode.NOT_FOUND
    )
    await gateway.RemoveDevice(remove, metadata=alice_md, timeout=TIMEOUT_S)
    await gateway.RemoveDevice(remove, metadata=alice_md, timeout=TIMEOUT_S)  # a retry is fine
    listed = await gateway.ListDevices(
        auth_pb2.ListDevicesRequest(user_ids=[alice.user_id]), metadata=bob_md, timeout=TIMEOUT_S
    )
    assert [d.device_id for d in listed.devices] == []
    claim = auth_pb2.ClaimOneTimeKeyRequest(user_id=alice.user_id, device_id="OLD")
    assert await status_code(gateway.ClaimOneTimeKey(claim, metadata=bob_md, timeout=TIMEOUT_S)) == (
        grpc.StatusCode.NOT_FOUND
    )
    # The id is not handed out again (other members pinned its old keys).
    again = gateway.PublishDeviceKeys(publish_request(vodozemac.Account(), alice.user_id, "OLD"), metadata=alice_md)
    assert await status_code(again) == grpc.StatusCode.ALREADY_EXISTS
