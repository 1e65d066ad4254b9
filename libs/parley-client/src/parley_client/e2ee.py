"""End-to-end encryption for the client SDK with vodozemac: Olm between devices, Megolm per channel.

What the server sees: public device keys, Olm ciphertext in to-device queues and Megolm
ciphertext as message bodies. What stays here: the Olm account, sessions and group sessions.

- A device publishes its identity keys (self-signed) and a pool of signed one-time keys plus a
  fallback key in auth's key directory, the platform's only one (through the gateway).
- Each device's Ed25519 key is pinned the first time this client sees it (trust on first
  use, `KeyPins`); a device whose key later changes is refused, never encrypted to.
- To send in an encrypted channel it keeps one outbound Megolm session per channel and shares
  its key with every member device over an Olm session (opened with a claimed one-time key,
  or the fallback key once those ran out).
- When a member has left or removed a device since the session was shared, it starts a new
  session and shares that only with the remaining devices: what left cannot decrypt what follows.
- `to_state`/`from_state` (used by DeviceStore) keep all of it across restarts, pickled.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import vodozemac
from parley.auth.v1 import auth_pb2
from parley.auth.v1.events_pb2 import UploadedOneTimeKey
from parley.messaging.v1 import messaging_pb2
from parley.messaging.v1.events_pb2 import ToDeviceSent

BODY_PREFIX = "megolm.v1:"
ROOM_KEY = "parley.room_key.v1"
OLM_PRE_KEY = 0


class UndecryptableMessage(Exception):
    """No key for this message reached this device (sent before it joined, or after it left)."""


class DeviceKeyChanged(Exception):
    """A device shows other keys than the ones pinned when this client first saw it: it may be an
    impostor. Nothing is encrypted to it until the user checks the fingerprint out of band."""


# The bytes a device signs, exactly as auth's key directory checks them (see auth.proto).
def device_message(user_id: str, device_id: str, curve25519: bytes, ed25519: bytes) -> bytes:
    return b"\x00".join([b"parley-device-v1", user_id.encode(), device_id.encode(), curve25519 + ed25519])


def one_time_key_message(user_id: str, device_id: str, key_id: str, key: bytes) -> bytes:
    return b"\x00".join([b"parley-otk-v1", user_id.encode(), device_id.encode(), key_id.encode(), key])


def raw(key: vodozemac.Curve25519PublicKey | vodozemac.Ed25519PublicKey | vodozemac.Ed25519Signature) -> bytes:
    text = key.to_base64()
    return base64.b64decode(text + "=" * (-len(text) % 4))


def b64(data: bytes) -> str:
    """Unpadded base64, as vodozemac reads and writes keys."""
    return base64.b64encode(data).decode().rstrip("=")


def fingerprint(device: auth_pb2.Device) -> str:
    """The device's Ed25519 key in groups of four, to compare aloud or side by side."""
    text = b64(device.ed25519)
    return " ".join(text[i : i + 4] for i in range(0, len(text), 4))


def verify_device(device: auth_pb2.Device) -> None:
    """The device's keys are signed by its own Ed25519 key (the server checked too; so do we)."""
    try:
        vodozemac.Ed25519PublicKey.from_base64(b64(device.ed25519)).verify_signature(
            device_message(device.user_id, device.device_id, device.curve25519, device.ed25519),
            vodozemac.Ed25519Signature.from_base64(b64(device.signature)),
        )
    except (vodozemac.SignatureException, vodozemac.KeyException, vodozemac.DecodeException) as exc:
        raise DeviceKeyChanged(f"device {device.device_id} of {device.user_id}: bad self-signature ({exc})") from None


@dataclass
class KeyPins:
    """Trust on first use: (user, device) -> Ed25519 key, and which devices the user verified."""

    ed25519: dict[tuple[str, str], str] = field(default_factory=dict)
    verified: set[tuple[str, str]] = field(default_factory=set)

    def check(self, device: auth_pb2.Device) -> None:
        verify_device(device)
        key = b64(device.ed25519)
        pinned = self.ed25519.setdefault((device.user_id, device.device_id), key)
        if pinned != key:
            raise DeviceKeyChanged(
                f"device {device.device_id} of {device.user_id} now shows another identity key than when first "
                "seen; not encrypting to it (compare fingerprints with `parley devices`)"
            )

    def to_json(self) -> dict[str, object]:
        return {
            "ed25519": [[u, d, k] for (u, d), k in sorted(self.ed25519.items())],
            "verified": sorted([u, d] for u, d in self.verified),
        }

    @classmethod
    def from_json(cls, raw: dict[str, object]) -> KeyPins:
        pins = cls()
        for u, d, k in raw.get("ed25519", []):  # type: ignore[attr-defined]
            pins.ed25519[(u, d)] = k
        for u, d in raw.get("verified", []):  # type: ignore[attr-defined]
            pins.verified.add((u, d))
        return pins


@dataclass
class _Outbound:
    session: vodozemac.GroupSession
    shared_with: set[tuple[str, str]] = field(default_factory=set)


def format_body(device_id: str, session_id: str, ciphertext: str) -> str:
    return f"{BODY_PREFIX}{device_id}:{session_id}:{ciphertext}"


def parse_body(body: str) -> tuple[str, str, str]:
    """(sender device id, Megolm session id, base64 ciphertext) of an encrypted body."""
    if not body.startswith(BODY_PREFIX):
        raise UndecryptableMessage("not an end-to-end encrypted message")
    parts = body[len(BODY_PREFIX) :].rsplit(":", 2)
    if len(parts) != 3:
        raise UndecryptableMessage("malformed encrypted message")
    return parts[0], parts[1], parts[2]


class DeviceCalls(Protocol):
    """What a device asks of the platform: the key directory and the to-device queue.
    ParleyClient provides them; the device needs nothing else of it, and does not import it."""

    @property
    def user_id(self) -> str | None: ...

    async def publish_device_keys(
        self, *, device_id: str, curve25519: bytes, ed25519: bytes, signature: bytes, display_name: str = ""
    ) -> auth_pb2.Device: ...

    async def upload_one_time_keys(
        self,
        device_id: str,
        keys: Sequence[UploadedOneTimeKey],
        *,
        fallback_key: UploadedOneTimeKey | None = None,
    ) -> int: ...

    async def list_devices(self, user_ids: Sequence[str]) -> list[auth_pb2.Device]: ...

    async def claim_one_time_key(self, user_id: str, device_id: str) -> auth_pb2.ClaimedOneTimeKey: ...

    async def send_to_device(self, messages: Sequence[ToDeviceSent]) -> None: ...

    async def fetch_to_device(self, device_id: str, *, after_queue_seq: int) -> list[ToDeviceSent]: ...


class E2eeDevice:
    """One device of the logged-in user: its Olm account and every session it holds."""

    def __init__(self, client: DeviceCalls, device_id: str, account: vodozemac.Account | None = None) -> None:
        self._client = client
        self.device_id = device_id
        self.account = account or vodozemac.Account()
        self.pins = KeyPins()
        self._olm: dict[str, list[vodozemac.Session]] = {}  # peer identity key -> sessions, newest last
        self._outbound: dict[str, _Outbound] = {}
        self._inbound: dict[str, tuple[str, vodozemac.InboundGroupSession]] = {}  # session id -> (channel, session)
        self._to_device_seen = 0
        # Called after every change worth keeping (a DeviceStore saves the device then).
        self.changed: Callable[[], None] = lambda: None

    # --- persistence (see DeviceStore) -----------------------------------------------------

    def to_state(self, pickle_key: bytes) -> dict[str, Any]:
        """Everything this device holds, its secrets pickled (encrypted) by vodozemac with `pickle_key`."""
        return {
            "version": 1,
            "user_id": self._user_id,
            "device_id": self.device_id,
            "account": self.account.pickle(pickle_key),
            "olm": {peer: [s.pickle(pickle_key) for s in sessions] for peer, sessions in self._olm.items()},
            "outbound": {
                channel: {"session": o.session.pickle(pickle_key), "shared_with": sorted(map(list, o.shared_with))}
                for channel, o in self._outbound.items()
            },
            "inbound": {sid: [channel, s.pickle(pickle_key)] for sid, (channel, s) in self._inbound.items()},
            "to_device_seen": self._to_device_seen,
            "pins": self.pins.to_json(),
        }

    @classmethod
    def from_state(cls, client: DeviceCalls, state: dict[str, Any], pickle_key: bytes) -> E2eeDevice:
        device = cls(client, state["device_id"], vodozemac.Account.from_pickle(state["account"], pickle_key))
        device._olm = {
            peer: [vodozemac.Session.from_pickle(s, pickle_key) for s in sessions]
            for peer, sessions in state["olm"].items()
        }
        device._outbound = {
            channel: _Outbound(
                session=vodozemac.GroupSession.from_pickle(o["session"], pickle_key),
                shared_with={(u, d) for u, d in o["shared_with"]},
            )
            for channel, o in state["outbound"].items()
        }
        device._inbound = {
            sid: (channel, vodozemac.InboundGroupSession.from_pickle(s, pickle_key))
            for sid, (channel, s) in state["inbound"].items()
        }
        device._to_device_seen = state["to_device_seen"]
        device.pins = KeyPins.from_json(state["pins"])
        return device

    @property
    def identity_key(self) -> str:
        return self.account.curve25519_key.to_base64()

    @property
    def _user_id(self) -> str:
        return self._client.user_id or ""

    def _signed(self, key_id: str, key: vodozemac.Curve25519PublicKey) -> UploadedOneTimeKey:
        message = one_time_key_message(self._user_id, self.device_id, key_id, raw(key))
        return UploadedOneTimeKey(key_id=key_id, key=raw(key), signature=raw(self.account.sign(message)))

    async def publish(self, one_time_keys: int = 20) -> int:
        """Publish this device's keys in auth's key directory, then fresh signed one-time keys and
        a fallback key (handed out when the one-time keys run out); returns how many are unclaimed."""
        curve, ed = raw(self.account.curve25519_key), raw(self.account.ed25519_key)
        await self._client.publish_device_keys(
            device_id=self.device_id,
            curve25519=curve,
            ed25519=ed,
            signature=raw(self.account.sign(device_message(self._user_id, self.device_id, curve, ed))),
        )
        return await self.upload_keys(one_time_keys)

    async def upload_keys(self, one_time_keys: int = 20) -> int:
        self.account.generate_one_time_keys(one_time_keys)
        # vodozemac 0.10 has fallback keys, its type stubs do not list them yet.
        account: Any = self.account
        account.generate_fallback_key()
        keys = [self._signed(i, k) for i, k in self.account.one_time_keys.items()]
        # vodozemac numbers fallback keys apart from one-time keys: a prefix keeps the ids distinct.
        fallback = [self._signed(f"fb_{i}", k) for i, k in account.fallback_key.items()]
        left = await self._client.upload_one_time_keys(
            self.device_id, keys, fallback_key=fallback[0] if fallback else None
        )
        self.account.mark_keys_as_published()
        self.changed()
        return left

    # --- sending ----------------------------------------------------------------------------

    async def encrypt(self, channel: messaging_pb2.Channel, plaintext: str) -> str:
        devices = await self._client.list_devices(sorted(channel.member_ids))
        for device in devices:
            self.pins.check(device)  # before any key goes out: a changed key stops the send
        current = {(d.user_id, d.device_id) for d in devices}
        outbound = self._outbound.get(channel.channel_id)
        if outbound is None or not outbound.shared_with <= current:
            # First message, or a member left or removed a device since: a new session whose
            # key those devices never get.
            outbound = self._new_outbound(channel.channel_id)
        await self._share(channel.channel_id, outbound, devices)
        message = outbound.session.encrypt(plaintext.encode())
        self.changed()
        return format_body(self.device_id, outbound.session.session_id, message.to_base64())

    def _new_outbound(self, channel_id: str) -> _Outbound:
        session = vodozemac.GroupSession()
        outbound = _Outbound(session=session)
        self._outbound[channel_id] = outbound
        # Our own device reads its own messages with the same key.
        self._inbound[session.session_id] = (channel_id, vodozemac.InboundGroupSession(session.session_key))
        return outbound

    async def _share(self, channel_id: str, outbound: _Outbound, devices: Iterable[auth_pb2.Device]) -> None:
        me = (self._user_id, self.device_id)
        missing = [d for d in devices if (d.user_id, d.device_id) not in {*outbound.shared_with, me}]
        if not missing:
            return
        room_key = json.dumps(
            {
                "type": ROOM_KEY,
                "channel_id": channel_id,
                "session_id": outbound.session.session_id,
                "session_key": outbound.session.session_key.to_base64(),
            }
        ).encode()
        messages = []
        for device in missing:
            session = await self._olm_session_to(device)
            olm_type, ciphertext = session.encrypt(room_key).to_parts()
            messages.append(
                ToDeviceSent(
                    recipient_user_id=device.user_id,
                    recipient_device_id=device.device_id,
                    sender_device_id=self.device_id,
                    sender_identity_key=self.identity_key,
                    olm_type=olm_type,
                    ciphertext=ciphertext,
                )
            )
        await self._client.send_to_device(messages)
        outbound.shared_with.update((d.user_id, d.device_id) for d in missing)

    async def _olm_session_to(self, device: auth_pb2.Device) -> vodozemac.Session:
        identity_key = b64(device.curve25519)
        sessions = self._olm.get(identity_key)
        if sessions:
            return sessions[-1]
        claimed = await self._client.claim_one_time_key(device.user_id, device.device_id)
        self.pins.check(claimed.device)
        if claimed.device.curve25519 != device.curve25519:
            raise DeviceKeyChanged(f"device {device.device_id} changed its identity key; not sharing keys with it")
        one_time = claimed.one_time_key
        try:
            vodozemac.Ed25519PublicKey.from_base64(b64(device.ed25519)).verify_signature(
                one_time_key_message(device.user_id, device.device_id, one_time.key_id, one_time.key),
                vodozemac.Ed25519Signature.from_base64(b64(one_time.signature)),
            )
        except (vodozemac.SignatureException, vodozemac.DecodeException) as exc:
            raise DeviceKeyChanged(
                f"device {device.device_id}: one-time key not signed by the device ({exc})"
            ) from None
        session = self.account.create_outbound_session(
            vodozemac.Curve25519PublicKey.from_base64(identity_key),
            vodozemac.Curve25519PublicKey.from_base64(b64(one_time.key)),
        )
        self._olm.setdefault(identity_key, []).append(session)
        self.changed()
        return session

    # --- receiving --------------------------------------------------------------------------

    async def decrypt(self, message: messaging_pb2.ChatMessage) -> str:
        _, session_id, ciphertext = parse_body(message.body)
        if session_id not in self._inbound:
            await self.receive_keys()
        known = self._inbound.get(session_id)
        if known is None:
            raise UndecryptableMessage("no key for this message reached this device")
        channel_id, inbound = known
        if channel_id != message.channel_id:
            raise UndecryptableMessage("this message's key belongs to another channel")
        try:
            decrypted = inbound.decrypt(vodozemac.MegolmMessage.from_base64(ciphertext))
        except (vodozemac.MegolmDecryptionException, vodozemac.DecodeException) as exc:
            raise UndecryptableMessage(f"cannot decrypt: {exc}") from None
        return decrypted.plaintext.decode()

    async def receive_keys(self) -> int:
        """Fetch and open the room keys queued for this device; returns how many arrived."""
        received = 0
        while True:
            batch = await self._client.fetch_to_device(self.device_id, after_queue_seq=self._to_device_seen)
            if not batch:
                return received
            for queued in batch:
                self._to_device_seen = queued.queue_seq
                try:
                    payload = json.loads(self._open_olm(queued))
                except (ValueError, vodozemac.OlmDecryptionException, vodozemac.SessionCreationException):
                    continue  # not for us or damaged: a sender will share again with a new session
                if payload.get("type") == ROOM_KEY:
                    key = vodozemac.SessionKey(payload["session_key"])
                    self._inbound[payload["session_id"]] = (payload["channel_id"], vodozemac.InboundGroupSession(key))
                    received += 1
            self.changed()  # Olm ratchets moved and one-time keys were used: keep that

    def _open_olm(self, queued: ToDeviceSent) -> bytes:
        message = vodozemac.AnyOlmMessage.from_parts(queued.olm_type, queued.ciphertext)
        sessions = self._olm.setdefault(queued.sender_identity_key, [])
        for session in reversed(sessions):
            try:
                return session.decrypt(message)
            except vodozemac.OlmDecryptionException:
                continue
        pre_key = message.to_pre_key()
        if queued.olm_type != OLM_PRE_KEY or pre_key is None:
            raise vodozemac.OlmDecryptionException("no session with this sender")
        session, plaintext = self.account.create_inbound_session(
            vodozemac.Curve25519PublicKey.from_base64(queued.sender_identity_key), pre_key
        )
        sessions.append(session)
        return plaintext
