"""How archive records are sealed: whose key, which associated data, AES-256-GCM. No I/O here.

Every event is encrypted under the data key of the person or channel it is about, so
crypto-shredding one user's key erases exactly their personal data (their account record, the
messages they wrote) and nothing of anyone else's. The identifying columns of a record are bound
as associated data: moving a ciphertext to another row, aggregate or version fails to open.
"""

from __future__ import annotations

import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import Message
from parley.common.v1.envelope_pb2 import EventEnvelope

from parley_core.log_deletion import personal_data_of
from parley_core.same_named import same_named

NONCE_BYTES = 12
SYSTEM_OWNER = "system"


class RecordUnreadable(Exception):
    """The record's key was shredded, or the record does not belong where it is stored."""


def user_owner(user_id: str) -> str:
    return f"user:{user_id}"


def channel_owner(channel_id: str) -> str:
    return f"channel:{channel_id}"


def data_owner(envelope: EventEnvelope, payload: Message | None) -> str:
    """Whose data key seals this event: its author for personal content, else its aggregate (the
    same rule the owners check a deletion against, parley_core.log_deletion)."""
    if (user_id := personal_data_of(envelope, payload)) is not None:
        return user_owner(user_id)
    if envelope.aggregate_type == "channel":
        return channel_owner(envelope.aggregate_id)
    return SYSTEM_OWNER


# What an event's sealed envelope is bound to: where it stands in its stream and in its aggregate.
AAD_FIELDS = ("stream", "stream_seq", "event_id", "aggregate_type", "aggregate_id", "aggregate_version")


def event_aad(
    *, stream: str, stream_seq: int, event_id: str, aggregate_type: str, aggregate_id: str, aggregate_version: int
) -> bytes:
    return "\x1f".join(
        ("parley-event-v1", stream, str(stream_seq), event_id, aggregate_type, aggregate_id, str(aggregate_version))
    ).encode()


def row_aad(row: Any) -> bytes:
    """The associated data an archived row's envelope is sealed with, from the row's own columns."""
    return event_aad(**same_named(row, *AAD_FIELDS))


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
    except InvalidTag as exc:
        raise RecordUnreadable("record does not open with its key and position (tampered or moved)") from exc
