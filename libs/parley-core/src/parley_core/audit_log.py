"""The audit chain on the live SEC stream: where it ends (auth links the next record there; the
verifier and `parley audit checkpoint` read it)."""

from __future__ import annotations

from dataclasses import dataclass

import nats.js.errors
from google.protobuf.message import DecodeError
from nats.js import JetStreamContext
from parley.auth.v1.events_pb2 import SecurityEventRecorded

from parley_core.audit import TrustedKeys, record_digest
from parley_core.envelope import UnknownEventType, decode, open_payload

SEC_STREAM = "SEC"


@dataclass(frozen=True)
class ChainHead:
    stream_last_seq: int  # the stream's newest message, audit record or not
    record: SecurityEventRecorded | None  # the newest signed audit record; None before the first (or none found)
    read: int = 0  # messages read to find it
    forged: int = 0  # records passed over: signed with no key the reader trusts


async def chain_head(
    js: JetStreamContext, keys: TrustedKeys, stream: str = SEC_STREAM, *, after_seq: int = 0
) -> ChainHead:
    """The newest SecurityEventRecorded on the stream signed with a key in `keys`, found from its
    end backwards down to `after_seq` (exclusive; 0: the whole stream). Anyone who may publish on
    SEC can write a message that looks like a record; only auth's audit key signs one, so an
    unsigned or wrongly signed record is no link in the chain, however it numbers itself.

    An access-token key signs only a chain from before audit keys (see TrustedKeys): a record it
    signed heads the chain only if no audit-signed record comes before it, so the whole stream is
    read for it (never within a bounded lookup, `after_seq`)."""
    state = (await js.stream_info(stream)).state
    seq = state.last_seq
    read = forged = 0
    # The newest token-signed record, and how many were read, while no audit-signed one is found.
    token_signed: SecurityEventRecorded | None = None
    token_count = 0
    while seq and seq >= state.first_seq and seq > after_seq:
        read += 1
        seq -= 1
        try:
            raw = await js.get_msg(stream, seq + 1)
        except nats.js.errors.NotFoundError:  # a deleted message
            continue
        try:
            payload = open_payload(decode(raw.data or b""))
        except (DecodeError, UnknownEventType):
            continue
        if not isinstance(payload, SecurityEventRecorded):
            continue
        if _sound(payload, keys, token_allowed=False):
            forged += token_count  # a token key signed them after an audit key took over
            return ChainHead(stream_last_seq=state.last_seq, record=payload, read=read, forged=forged)
        if _sound(payload, keys, token_allowed=True):
            token_signed = token_signed or payload
            token_count += 1
        else:
            forged += 1
    head = token_signed if after_seq == 0 else None
    return ChainHead(stream_last_seq=state.last_seq, record=head, read=read, forged=forged)


def _sound(record: SecurityEventRecorded, keys: TrustedKeys, *, token_allowed: bool) -> bool:
    """Its hash is its own (a real record's hash and signature pasted onto other fields is not)
    and a trusted key signed it."""
    if record_digest(record) != record.record_hash:
        return False
    return keys.signed(record.key_id, record.signature, record.record_hash, token_allowed=token_allowed)
