"""The end-to-end encryption key directory and to-device queues, without I/O.

The server holds public keys and Olm ciphertext only. A device publishes its identity and
signing keys with a pool of one-time keys; another device claims one key (each is handed out
once) to open an Olm session, then sends room keys through the to-device queue, which keeps
them for the recipient until it fetches them (it may be offline for a while).

Why here and not in auth: the auth service's key directory is built on another branch; the
messaging service already owns the conversations these keys protect, so the minimal directory
lives beside them, on messaging's own subjects (parley.msg.device.<user>, parley.msg.todevice.<user>).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

from parley_core.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, ResourceExhausted

MAX_DEVICE_ID = 64
MAX_KEY_CHARS = 64  # unpadded base64 of a 32-byte key is 43 characters
MAX_ONE_TIME_KEYS_PER_PUBLISH = 100
MAX_POOL = 500
MAX_CIPHERTEXT = 64 * 1024
MAX_TO_DEVICE_PER_CALL = 200
E2EE_BODY_PREFIX = "megolm.v1:"
MAX_E2EE_BODY = 12_000
_BASE64 = frozenset(string.ascii_letters + string.digits + "+/=")


@dataclass
class Device:
    user_id: str
    device_id: str
    identity_key: str
    signing_key: str
    one_time_keys: dict[str, str] = field(default_factory=dict)  # key id -> public key, oldest first


@dataclass
class UserDevices:
    """One user's devices: an aggregate on parley.msg.device.<user_id>."""

    user_id: str
    devices: dict[str, Device] = field(default_factory=dict)
    last_stream_seq: int = 0
    version: int = 0

    def device(self, device_id: str) -> Device:
        found = self.devices.get(device_id)
        if found is None:
            raise NotFound(f"user has no device {device_id!r}; it must publish its keys first")
        return found


@dataclass(frozen=True)
class QueuedMessage:
    sender_user_id: str
    sender_device_id: str
    sender_identity_key: str
    olm_type: int
    ciphertext: bytes
    queue_seq: int


@dataclass
class ToDeviceQueue:
    """Messages waiting for one user's devices: an aggregate on parley.msg.todevice.<user_id>."""

    user_id: str
    messages: dict[str, list[QueuedMessage]] = field(default_factory=dict)  # device id -> in order
    last_stream_seq: int = 0
    version: int = 0

    def next_seq(self, device_id: str) -> int:
        return len(self.messages.get(device_id, ())) + 1

    def after(self, device_id: str, after_seq: int, limit: int) -> list[QueuedMessage]:
        return self.messages.get(device_id, [])[after_seq : after_seq + limit]


def validate_device_id(device_id: str) -> str:
    if not device_id or len(device_id) > MAX_DEVICE_ID or not device_id.isprintable() or " " in device_id:
        raise InvalidArgument(f"device_id must be 1..{MAX_DEVICE_ID} printable characters without spaces")
    return device_id


def validate_key(name: str, key: str) -> str:
    if not key or len(key) > MAX_KEY_CHARS or not set(key) <= _BASE64:
        raise InvalidArgument(f"{name} must be a base64 public key of at most {MAX_KEY_CHARS} characters")
    return key


def validate_one_time_keys(keys: list[tuple[str, str]]) -> list[tuple[str, str]]:
    if len(keys) > MAX_ONE_TIME_KEYS_PER_PUBLISH:
        raise InvalidArgument(f"publish at most {MAX_ONE_TIME_KEYS_PER_PUBLISH} one-time keys at once")
    for key_id, key in keys:
        if not key_id or len(key_id) > MAX_DEVICE_ID:
            raise InvalidArgument(f"one-time key ids must be 1..{MAX_DEVICE_ID} characters")
        validate_key("one-time key", key)
    return keys


def check_publish(user: UserDevices, device_id: str, identity_key: str, signing_key: str, new_keys: int) -> None:
    """A device keeps its identity for life; a different key under the same id is refused."""
    existing = user.devices.get(device_id)
    if existing is not None and (existing.identity_key, existing.signing_key) != (identity_key, signing_key):
        raise FailedPrecondition(f"device {device_id!r} already has other keys; register a new device id instead")
    if existing is not None and len(existing.one_time_keys) + new_keys > MAX_POOL:
        raise ResourceExhausted(f"a device keeps at most {MAX_POOL} unclaimed one-time keys")


def next_one_time_key(device: Device) -> tuple[str, str]:
    if not device.one_time_keys:
        raise ResourceExhausted("the device has no one-time keys left; it must publish more before a new session")
    return next(iter(device.one_time_keys.items()))


def check_ciphertext(olm_type: int, ciphertext: bytes) -> None:
    if olm_type not in (0, 1):
        raise InvalidArgument("olm_type must be 0 (pre-key) or 1 (normal)")
    if not ciphertext or len(ciphertext) > MAX_CIPHERTEXT:
        raise InvalidArgument(f"ciphertext must be 1..{MAX_CIPHERTEXT} bytes")


def require_own_device(user: UserDevices | None, device_id: str) -> Device:
    if not device_id:
        raise InvalidArgument("device_id is required")
    if user is None or device_id not in user.devices:
        raise PermissionDenied(f"device {device_id!r} is not one of yours; publish its keys first")
    return user.devices[device_id]


def validate_encrypted_body(body: str) -> str:
    """An encrypted channel takes only Megolm ciphertext, so a client bug cannot post plaintext into it."""
    if not body.startswith(E2EE_BODY_PREFIX) or len(body) > MAX_E2EE_BODY:
        raise InvalidArgument(
            f"this channel is end-to-end encrypted: the body must be {E2EE_BODY_PREFIX}… ciphertext "
            f"of at most {MAX_E2EE_BODY} characters (the client SDK encrypts for you)"
        )
    return body
