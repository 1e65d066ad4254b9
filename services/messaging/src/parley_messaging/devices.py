"""The to-device relay of end-to-end encryption and what it knows of auth's directory; no I/O.

Devices and their keys live in auth's key directory (parley.auth.device.*), the platform's
only one. Messaging follows auth's events into `AuthDirectory`, a projection of which users
and devices exist and each device's Curve25519 identity key, so the relay can refuse a
message from or to a device that does not exist (or was removed) and a direct conversation
with an unknown user. The relay itself queues Olm ciphertext per recipient device
(parley.msg.todevice.<user>) until the device fetches it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from parley_core.errors import InvalidArgument, NotFound, PermissionDenied

MAX_CIPHERTEXT = 64 * 1024
MAX_TO_DEVICE_PER_CALL = 200
E2EE_BODY_PREFIX = "megolm.v1:"
MAX_E2EE_BODY = 12_000


def key_base64(key: bytes) -> str:
    """A public key as vodozemac writes it (unpadded standard base64), as clients send it."""
    return base64.b64encode(key).decode().rstrip("=")


@dataclass
class AuthDirectory:
    """Users and devices as auth's events say; removed devices stay known as removed."""

    users: set[str] = field(default_factory=set)
    identity_keys: dict[tuple[str, str], str] = field(default_factory=dict)  # (user, device) -> base64
    removed: set[tuple[str, str]] = field(default_factory=set)

    def add_device(self, user_id: str, device_id: str, curve25519: bytes) -> None:
        if (user_id, device_id) not in self.removed:
            self.identity_keys[(user_id, device_id)] = key_base64(curve25519)

    def remove_device(self, user_id: str, device_id: str) -> None:
        self.removed.add((user_id, device_id))
        self.identity_keys.pop((user_id, device_id), None)

    def identity_key(self, user_id: str, device_id: str) -> str | None:
        return self.identity_keys.get((user_id, device_id))


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
    sent: dict[str, int] = field(default_factory=dict)  # device id -> last queue_seq handed out
    last_stream_seq: int = 0
    version: int = 0

    def next_seq(self, device_id: str) -> int:
        return self.sent.get(device_id, 0) + 1

    def add(self, device_id: str, message: QueuedMessage, *, keep: bool) -> None:
        self.sent[device_id] = max(self.sent.get(device_id, 0), message.queue_seq)
        if keep:
            self.messages.setdefault(device_id, []).append(message)

    def drop(self, device_id: str) -> None:
        """The device was removed: what waited for it goes with it."""
        self.messages.pop(device_id, None)

    def after(self, device_id: str, after_seq: int, limit: int) -> list[QueuedMessage]:
        return [m for m in self.messages.get(device_id, []) if m.queue_seq > after_seq][:limit]


def check_ciphertext(olm_type: int, ciphertext: bytes) -> None:
    if olm_type not in (0, 1):
        raise InvalidArgument("olm_type must be 0 (pre-key) or 1 (normal)")
    if not ciphertext or len(ciphertext) > MAX_CIPHERTEXT:
        raise InvalidArgument(f"ciphertext must be 1..{MAX_CIPHERTEXT} bytes")


def require_own_device(directory: AuthDirectory, user_id: str, device_id: str) -> str:
    """The identity key of one of the caller's devices."""
    if not device_id:
        raise InvalidArgument("device_id is required")
    key = directory.identity_key(user_id, device_id)
    if key is None:
        raise PermissionDenied(f"device {device_id!r} is not one of yours; publish its keys (enable E2EE) first")
    return key


def require_device(directory: AuthDirectory, user_id: str, device_id: str) -> None:
    if directory.identity_key(user_id, device_id) is None:
        raise NotFound(f"user has no device {device_id!r} (never published, or removed); list their devices again")


def validate_encrypted_body(body: str) -> str:
    """An encrypted channel takes only Megolm ciphertext, so a client bug cannot post plaintext into it."""
    if not body.startswith(E2EE_BODY_PREFIX) or len(body) > MAX_E2EE_BODY:
        raise InvalidArgument(
            f"this channel is end-to-end encrypted: the body must be {E2EE_BODY_PREFIX}… ciphertext "
            f"of at most {MAX_E2EE_BODY} characters (the client SDK encrypts for you)"
        )
    return body
