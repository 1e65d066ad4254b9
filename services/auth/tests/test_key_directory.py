"""The E2EE key directory with real Olm keys from vodozemac: publish, upload, claim once, list."""

from __future__ import annotations

import asyncio
import base64

import grpc
import vodozemac
from parley.auth.v1 import auth_pb2

from parley_auth.keys import device_message, one_time_key_message
from parley_core.testing.stack import TIMEOUT_S, Stack, bearer

CLAIMERS = 12
KEYS = 8


def raw(key: vodozemac.Curve25519PublicKey | vodozemac.Ed25519PublicKey) -> bytes:
    text = key.to_base64()
    return base64.b64decode(text + "=" * (-len(text) % 4))


def signature(account: vodozemac.Account, message: bytes) -> bytes:
    text = account.sign(message).to_base64()
    return base64.b64decode(text + "=" * (-len(text) % 4))


def publish_request(account: vodozemac.Account, user_id: str, device_id: str) -> auth_pb2.PublishDeviceKeysRequest:
    curve, ed = raw(account.curve25519_key), raw(account.ed25519_key)
    return auth_pb2.PublishDeviceKeysRequest(
        device_id=device_id,
        curve25519=curve,
        ed25519=ed,
        signature=signature(account, device_message(user_id, device_id, curve, ed)),
        display_name="laptop",
    )


def one_time_keys(account: vodozemac.Account, user_id: str, device_id: str, n: int) -> list[auth_pb2.OneTimeKey]:
    account.generate_one_time_keys(n)
    found = []
    for key_id, key in account.one_time_keys.items():
        message = one_time_key_message(user_id, device_id, key_id, raw(key))
        found.append(auth_pb2.OneTimeKey(key_id=key_id, key=raw(key), signature=signature(account, message)))
    account.mark_keys_as_published()
    return found


async def test_each_one_time_key_is_claimed_exactly_once_under_concurrency(stack: Stack) -> None:
    alice = await stack.create_user("alice", "member")
    await stack.create_user("bob", "member")
    alice_md = bearer((await stack.login("alice")).access_token)
    bob_md = bearer((await stack.login("bob")).access_token)
    gateway = stack.gateway()
    account = vodozemac.Account()

    device = await gateway.PublishAuthDeviceKeys(
        publish_request(account, alice.user_id, "LAPTOP1"), metadata=alice_md, timeout=TIMEOUT_S
    )
    assert device.curve25519 == raw(account.curve25519_key)
    uploaded = one_time_keys(account, alice.user_id, "LAPTOP1", KEYS)
    left = await gateway.UploadAuthOneTimeKeys(
        auth_pb2.UploadOneTimeKeysRequest(device_id="LAPTOP1", keys=uploaded), metadata=alice_md, timeout=TIMEOUT_S
    )
    assert left.one_time_keys_left == KEYS

    async def claim() -> str | grpc.StatusCode:
        try:
            got = await stack.gateway().ClaimAuthOneTimeKey(
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

    listed = await gateway.ListAuthDevices(
        auth_pb2.ListDevicesRequest(user_id=alice.user_id), metadata=bob_md, timeout=TIMEOUT_S
    )
    assert [(d.device_id, d.one_time_keys_left) for d in listed.devices] == [("LAPTOP1", 0)]


async def test_a_claimed_key_starts_a_working_olm_session(stack: Stack) -> None:
    alice = await stack.create_user("alice", "member")
    await stack.create_user("bob", "member")
    alice_md = bearer((await stack.login("alice")).access_token)
    bob_md = bearer((await stack.login("bob")).access_token)
    gateway = stack.gateway()
    alice_device = vodozemac.Account()
    await gateway.PublishAuthDeviceKeys(publish_request(alice_device, alice.user_id, "PHONE"), metadata=alice_md)
    await gateway.UploadAuthOneTimeKeys(
        auth_pb2.UploadOneTimeKeysRequest(
            device_id="PHONE", keys=one_time_keys(alice_device, alice.user_id, "PHONE", 1)
        ),
        metadata=alice_md,
        timeout=TIMEOUT_S,
    )
    claimed = await gateway.ClaimAuthOneTimeKey(
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

    async def code(call: object) -> grpc.StatusCode:
        try:
            await call  # type: ignore[misc]
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

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
        assert await code(gateway.PublishAuthDeviceKeys(broken, metadata=alice_md, timeout=TIMEOUT_S)) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
    await gateway.PublishAuthDeviceKeys(good, metadata=alice_md, timeout=TIMEOUT_S)
    other = vodozemac.Account()
    assert (
        await code(
            gateway.PublishAuthDeviceKeys(
                publish_request(other, alice.user_id, "DESK"), metadata=alice_md, timeout=TIMEOUT_S
            )
        )
        == grpc.StatusCode.ALREADY_EXISTS
    )
    # One-time keys signed by another device's key are refused.
    forged = one_time_keys(other, alice.user_id, "DESK", 1)
    upload = gateway.UploadAuthOneTimeKeys(
        auth_pb2.UploadOneTimeKeysRequest(device_id="DESK", keys=forged), metadata=alice_md, timeout=TIMEOUT_S
    )
    assert await code(upload) == grpc.StatusCode.INVALID_ARGUMENT
    missing = gateway.ClaimAuthOneTimeKey(
        auth_pb2.ClaimOneTimeKeyRequest(user_id=alice.user_id, device_id="NOPE"), metadata=alice_md, timeout=TIMEOUT_S
    )
    assert await code(missing) == grpc.StatusCode.NOT_FOUND
