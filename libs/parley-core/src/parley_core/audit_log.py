"""The audit chain on the live SEC stream: where it ends (auth links the next record there; the
verifier and `parley audit checkpoint` read it)."""

from __future__ import annotations

from dataclasses import dataclass

import nats.js.errors
from google.protobuf.message import DecodeError
from nats.js import JetStreamContext
from parley.auth.v1.events_pb2 import SecurityEventRecorded

from parley_core.envelope import UnknownEventType, decode, open_payload

SEC_STREAM = "SEC"


@dataclass(frozen=True)
class ChainHead:
    stream_last_seq: int  # the stream's newest message, audit record or not
    record: SecurityEventRecorded | None  # the newest audit record; None before the first


async def chain_head(js: JetStreamContext, stream: str = SEC_STREAM) -> ChainHead:
    """The newest SecurityEventRecorded on the stream, found from its end backwards: the stream
    may end with messages that are no audit records (another writer's), which the chain skips."""
    state = (await js.stream_info(stream)).state
    seq = state.last_seq
    while seq and seq >= state.first_seq:
        try:
            raw = await js.get_msg(stream, seq)
        except nats.js.errors.NotFoundError:  # a deleted message
            seq -= 1
            continue
        try:
            payload = open_payload(decode(raw.data or b""))
        except (DecodeError, UnknownEventType):
            payload = None
        if isinstance(payload, SecurityEventRecorded):
            return ChainHead(stream_last_seq=state.last_seq, record=payload)
        seq -= 1
    return ChainHead(stream_last_seq=state.last_seq, record=None)
