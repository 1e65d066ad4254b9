"""The event envelope: how every domain event is wrapped, identified and decoded.

Payload classes are looked up by their protobuf full name, so a reader needs no table of its
own; older schema versions pass through UPCASTERS before a handler sees them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from parley.common.v1.envelope_pb2 import EventEnvelope

from parley_core.actor import Actor

# (event_type, from_version) -> function turning the old payload bytes into the next version's.
UPCASTERS: dict[tuple[str, int], Callable[[bytes], bytes]] = {}
CURRENT_SCHEMA_VERSION: dict[str, int] = {}


@dataclass(frozen=True)
class NewEvent:
    """A domain event about to be appended; the bus adds its version, time and trace."""

    aggregate_type: str
    aggregate_id: str
    payload: Message
    actor: Actor  # written in its canonical form (parley_core.actor)
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def event_type(self) -> str:
        return self.payload.DESCRIPTOR.full_name


def seal(event: NewEvent, *, aggregate_version: int, producer: str, trace_context: dict[str, str]) -> EventEnvelope:
    occurred = Timestamp()
    occurred.FromMicroseconds(time.time_ns() // 1000)  # as datetime.now() would, without making one
    return EventEnvelope(
        event_id=event.event_id,
        event_type=event.event_type,
        schema_version=CURRENT_SCHEMA_VERSION.get(event.event_type, 1),
        aggregate_type=event.aggregate_type,
        aggregate_id=event.aggregate_id,
        aggregate_version=aggregate_version,
        occurred_at=occurred,
        actor=str(event.actor),
        trace_context=trace_context,
        payload=event.payload.SerializeToString(),
        producer=producer,
    )


class UnknownEventType(Exception):
    pass


def open_payload(envelope: EventEnvelope) -> Message:
    """Decode the payload into its protobuf class, upcasting older schema versions first."""
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(envelope.event_type)
    except KeyError as exc:
        raise UnknownEventType(f"no protobuf message named {envelope.event_type!r} is loaded") from exc
    data = envelope.payload
    version = envelope.schema_version or 1
    while (upcast := UPCASTERS.get((envelope.event_type, version))) is not None:
        data = upcast(data)
        version += 1
    message = message_factory.GetMessageClass(descriptor)()
    message.ParseFromString(data)
    return message


def decode(data: bytes) -> EventEnvelope:
    envelope = EventEnvelope()
    envelope.ParseFromString(data)
    return envelope
