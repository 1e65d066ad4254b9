"""End-to-end encryption for the client SDK with vodozemac: Olm between devices, Megolm per channel.

What the server sees: public device keys, Olm ciphertext in to-device queues and Megolm
ciphertext as message bodies. What stays here: the Olm account, sessions and group sessions.

- A device publishes its identity keys and a pool of one-time keys.
- To send in an encrypted channel it keeps one outbound Megolm session per channel and shares
  its key with every member device over an Olm session (opened with a claimed one-time key).
- When a member has left since the session was created, it starts a new session and shares
  that only with the remaining members: whoever left cannot decrypt what follows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import vodozemac
from parley.messaging.v1 import messaging_pb2
from parley.messaging.v1.events_pb2 import OneTimeKey

if TYPE_CHECKING:
    from parley_client.client import ParleyClient

BODY_PREFIX = "megolm.v1:"
ROOM_KEY = "parley.room_key.v1"
OLM_PRE_KEY = 0


class UndecryptableMessage(Exception):
    """No key for this message reached this device (sent before it joined, or after it left)."""


@dataclass
class _Outbound:
    session: vodozemac.GroupSession
    members: frozenset[str]
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


class E2eeDevice:
    """One device of the logged-in user: its Olm account and every session it holds."""

    def __init__(self, client: ParleyClient, device_id: str, account: vodozemac.Account | None = None) -> None:
        self._client = client
        self.device_id = device_id
        self.account = account or vodozemac.Account()
        self._olm: dict[str, list[vodozemac.Session]] = {}  # peer identity key -> sessions, newest last
        self._outbound: dict[str, _Outbound] = {}
        self._inbound: dict[str, tuple[str, vodozemac.InboundGroupSession]] = {}  # session id -> (channel, session)
        self._to_device_seen = 0

    @property
    def identity_key(self) -> str:
        return self.account.curve25519_key.to_base64()

    async def publish(self, one_time_keys: int = 20) -> int:
        """Publish this device's public keys and fresh one-time keys; returns how many are unclaimed."""
        self.account.generate_one_time_keys(one_time_keys)
        keys = [OneTimeKey(key_id=i, key=k.to_base64()) for i, k in self.account.one_time_keys.items()]
        left = await self._client.publish_device_keys(
            device_id=self.device_id,
            identity_key=self.identity_key,
            signing_key=self.account.ed25519_key.to_base64(),
            one_time_keys=keys,
        )
        self.account.mark_keys_as_published()
        return left

    # --- sending ----------------------------------------------------------------------------

    async def encrypt(self, channel: messaging_pb2.Channel, plaintext: str) -> str:
        members = frozenset(channel.member_ids)
        outbound = self._outbound.get(channel.channel_id)
        if outbound is None or not outbound.members <= members:
            # First message, or someone left: a new session they never get the key of.
            outbound = self._new_outbound(channel.channel_id, members)
        else:
            outbound.members = members
        await self._share(channel.channel_id, outbound, members)
        message = outbound.session.encrypt(plaintext.encode())
        return format_body(self.device_id, outbound.session.session_id, message.to_base64())

    def _new_outbound(self, channel_id: str, members: frozenset[str]) -> _Outbound:
        session = vodozemac.GroupSession()
        outbound = _Outbound(session=session, members=members)
        self._outbound[channel_id] = outbound
        # Our own device reads its own messages with the same key.
        self._inbound[session.session_id] = (channel_id, vodozemac.InboundGroupSession(session.session_key))
        return outbound

    async def _share(self, channel_id: str, outbound: _Outbound, members: Iterable[str]) -> None:
        devices = await self._client.list_devices(sorted(members))
        me = (self._client.user_id or "", self.device_id)
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
                messaging_pb2.ToDeviceMessage(
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

    async def _olm_session_to(self, device: messaging_pb2.DeviceKeys) -> vodozemac.Session:
        sessions = self._olm.get(device.identity_key)
        if sessions:
            return sessions[-1]
        claimed = await self._client.claim_one_time_key(device.user_id, device.device_id)
        if claimed.device.identity_key != device.identity_key:
            raise UndecryptableMessage(f"device {device.device_id} changed its identity key; not sharing keys with it")
        session = self.account.create_outbound_session(
            vodozemac.Curve25519PublicKey.from_base64(device.identity_key),
            vodozemac.Curve25519PublicKey.from_base64(claimed.one_time_key.key),
        )
        self._olm.setdefault(device.identity_key, []).append(session)
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

    def _open_olm(self, queued: messaging_pb2.ToDeviceMessage) -> bytes:
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
