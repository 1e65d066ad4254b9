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
from dataclasses import dataclass, field, fields

from parley_core.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted

MAX_CIPHERTEXT = 64 * 1024
MAX_TO_DEVICE_PER_CALL = 200
# What one sender may have waiting, undelivered, over every recipient device: room keys are a few
# hundred bytes, so this holds keys for thousands of devices, while no member can fill the relay's
# memory (or the log) with messages to devices that never fetch, their own spare ones included.
MAX_UNDELIVERED_BYTES_PER_SENDER = 16 * 1024 * 1024
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


# Named alike in the ToDeviceSent event that queues a message and in the one a fetch hands out.
QUEUED_FIELDS = tuple(f.name for f in fields(QueuedMessage))
# What the sender of a to-device message chooses (SendToDeviceRequest), relayed as sent; who
# sent it, to which user and its place in the queue are the relay's own.
SENDERS_FIELDS = ("recipient_device_id", "sender_device_id", "sender_identity_key", "olm_type", "ciphertext")


@dataclass
class ToDeviceQueue:
    """Messages waiting for one user's devices: an aggregate on parley.msg.todevice.<user_id>."""

    user_id: str
    messages: dict[str, list[QueuedMessage]] = field(default_factory=dict)  # device id -> in order
    sent: dict[str, int] = field(default_factory=dict)  # device id -> last queue_seq handed out
    fetched: dict[str, int] = field(default_factory=dict)  # device id -> it holds every message up to
    last_stream_seq: int = 0
    version: int = 0

    def next_seq(self, device_id: str) -> int:
        return self.sent.get(device_id, 0) + 1

    def add(self, device_id: str, message: QueuedMessage, *, keep: bool) -> bool:
        """Whether the message waits in the queue (not for a removed device, nor one that has
        already fetched past it)."""
        self.sent[device_id] = max(self.sent.get(device_id, 0), message.queue_seq)
        if not keep or message.queue_seq <= self.fetched.get(device_id, 0):
            return False
        self.messages.setdefault(device_id, []).append(message)
        return True

    def drop(self, device_id: str) -> list[QueuedMessage]:
        """The device was removed: what waited for it goes with it."""
        return self.messages.pop(device_id, [])

    def delivered(self, device_id: str, up_to_seq: int) -> list[QueuedMessage]:
        """The device fetched past `up_to_seq`: it holds those messages, which leave the queue."""
        if up_to_seq <= self.fetched.get(device_id, 0):
            return []
        self.fetched[device_id] = up_to_seq
        waiting = self.messages.get(device_id, [])
        gone = [m for m in waiting if m.queue_seq <= up_to_seq]
        self.messages[device_id] = [m for m in waiting if m.queue_seq > up_to_seq]
        return gone

    def after(self, device_id: str, after_seq: int, limit: int) -> list[QueuedMessage]:
        return [m for m in self.messages.get(device_id, []) if m.queue_seq > after_seq][:limit]


@dataclass
class UndeliveredBySender:
    """Bytes of ciphertext each sender has waiting in any queue, for the cap per sender."""

    bytes_of: dict[str, int] = field(default_factory=dict)

    def queued(self, message: QueuedMessage) -> None:
        self.bytes_of[message.sender_user_id] = self.bytes_of.get(message.sender_user_id, 0) + len(message.ciphertext)

    def left(self, messages: list[QueuedMessage]) -> None:
        for m in messages:
            remaining = self.bytes_of.get(m.sender_user_id, 0) - len(m.ciphertext)
            if remaining > 0:
                self.bytes_of[m.sender_user_id] = remaining
            else:
                self.bytes_of.pop(m.sender_user_id, None)

    def check(self, sender_user_id: str, adding: int) -> None:
        waiting = self.bytes_of.get(sender_user_id, 0)
        if waiting + adding > MAX_UNDELIVERED_BYTES_PER_SENDER:
            raise ResourceExhausted(
                f"you have {waiting} bytes of to-device messages that their devices have not fetched yet;"
                f" at most {MAX_UNDELIVERED_BYTES_PER_SENDER} may wait: send again once they have"
            )


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
