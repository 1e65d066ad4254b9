"""The E2EE key directory: devices, their identity keys, one-time and fallback keys; no I/O.

This is the platform's only key directory: clients publish here (through the gateway) and
messaging follows its events to relay to-device messages between devices that exist.

The server checks each device's self-signature and each one-time key's signature with
`cryptography`'s Ed25519 (the keys themselves come from vodozemac on the clients), so a
claimer receives only keys the device really published. Which key a claim gets is decided
here; that it is handed out once is settled by the append of OneTimeKeyClaimed at the
device subject's last sequence. When a device's one-time keys run out, a claim gets its
fallback key instead (as in Matrix): reusable until the device uploads a new one, so a
session can still start while the device is offline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from parley_core.errors import InvalidArgument

DEVICE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
KEY_ID = re.compile(r"^[A-Za-z0-9_+/=-]{1,64}$")
KEY_BYTES = 32
SIGNATURE_BYTES = 64
MAX_KEYS_PER_UPLOAD = 100
MAX_UNCLAIMED_KEYS = 1000
MAX_DEVICES_PER_USER = 50
MAX_DISPLAY_NAME = 100


def device_message(user_id: str, device_id: str, curve25519: bytes, ed25519: bytes) -> bytes:
    return b"\x00".join([b"parley-device-v1", user_id.encode(), device_id.encode(), curve25519 + ed25519])


def one_time_key_message(user_id: str, device_id: str, key_id: str, key: bytes) -> bytes:
    return b"\x00".join([b"parley-otk-v1", user_id.encode(), device_id.encode(), key_id.encode(), key])


def validate_device_id(device_id: str) -> str:
    if not DEVICE_ID.match(device_id):
        raise InvalidArgument("device_id must be 1-64 characters: letters, digits, '_' or '-'")
    return device_id


def check_signature(ed25519: bytes, signature: bytes, message: bytes, what: str) -> None:
    if len(signature) != SIGNATURE_BYTES:
        raise InvalidArgument(f"{what}: signature must be {SIGNATURE_BYTES} bytes (Ed25519)")
    try:
        Ed25519PublicKey.from_public_bytes(ed25519).verify(signature, message)
    except InvalidSignature:
        raise InvalidArgument(f"{what}: signature does not verify with the device's Ed25519 key") from None


def check_device_keys(
    user_id: str, device_id: str, *, curve25519: bytes, ed25519: bytes, signature: bytes, display_name: str
) -> None:
    validate_device_id(device_id)
    if len(curve25519) != KEY_BYTES or len(ed25519) != KEY_BYTES:
        raise InvalidArgument(f"curve25519 and ed25519 must be {KEY_BYTES}-byte public keys")
    if len(display_name) > MAX_DISPLAY_NAME:
        raise InvalidArgument(f"display_name must be at most {MAX_DISPLAY_NAME} characters")
    check_signature(ed25519, signature, device_message(user_id, device_id, curve25519, ed25519), "device keys")


@dataclass(frozen=True)
class StoredKey:
    key_id: str
    key: bytes
    signature: bytes


# What a device's owner publishes of it (PublishDeviceKeysRequest), and with the owner's id what
# DeviceKeysPublished, DeviceRecord and the API's Device carry, all by the same names.
PUBLISHED_KEY_FIELDS = ("device_id", "curve25519", "ed25519", "signature", "display_name")
DEVICE_FIELDS = ("user_id", *PUBLISHED_KEY_FIELDS)


@dataclass
class DeviceRecord:
    user_id: str
    device_id: str
    curve25519: bytes
    ed25519: bytes
    signature: bytes
    display_name: str
    unclaimed: dict[str, StoredKey] = field(default_factory=dict)  # insertion order = upload order
    seen_key_ids: set[str] = field(default_factory=set)
    fallback: StoredKey | None = None
    last_seq: int = 0
    version: int = 0

    def check_upload(self, keys: list[StoredKey], fallback: StoredKey | None = None) -> None:
        if (not keys and fallback is None) or len(keys) > MAX_KEYS_PER_UPLOAD:
            raise InvalidArgument(f"upload 1-{MAX_KEYS_PER_UPLOAD} one-time keys (or a fallback key) per call")
        if len(self.unclaimed) + len(keys) > MAX_UNCLAIMED_KEYS:
            raise InvalidArgument(f"a device may hold at most {MAX_UNCLAIMED_KEYS} unclaimed one-time keys")
        every = [*keys, *([fallback] if fallback is not None else [])]
        ids = [k.key_id for k in every]
        if len(set(ids)) != len(ids) or set(ids) & self.seen_key_ids:
            raise InvalidArgument("one-time and fallback key ids must be new for this device")
        for k in every:
            if not KEY_ID.match(k.key_id):
                raise InvalidArgument("key_id must be 1-64 characters of base64 or '_' '-'")
            if len(k.key) != KEY_BYTES:
                raise InvalidArgument(f"one-time key {k.key_id} must be a {KEY_BYTES}-byte Curve25519 key")
            message = one_time_key_message(self.user_id, self.device_id, k.key_id, k.key)
            check_signature(self.ed25519, k.signature, message, f"one-time key {k.key_id}")

    def next_key(self) -> StoredKey | None:
        return next(iter(self.unclaimed.values()), None)


@dataclass
class KeyDirectory:
    devices: dict[tuple[str, str], DeviceRecord] = field(default_factory=dict)
    removed: set[tuple[str, str]] = field(default_factory=set)  # ids never handed out again

    def get(self, user_id: str, device_id: str) -> DeviceRecord | None:
        return self.devices.get((user_id, device_id))

    def of_user(self, user_id: str) -> list[DeviceRecord]:
        return sorted((d for d in self.devices.values() if d.user_id == user_id), key=lambda d: d.device_id)
