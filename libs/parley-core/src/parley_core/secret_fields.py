"""Fields marked `[(parley.common.v1.secret) = true]` in the event schemas; no I/O.

A secret field (a password hash, a token digest, a sealed TOTP secret) belongs to the service
that writes the event: it seals the value on the bus itself, and every other reader of the
archive (the other services, the operator's tooling, an auditor, a user's export) gets the event
with these fields cleared. Marking a new field in the .proto is all it takes.
"""

from __future__ import annotations

import functools

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from parley.common.v1 import options_pb2
from parley.common.v1.envelope_pb2 import EventEnvelope

from parley_core.envelope import CURRENT_SCHEMA_VERSION, UnknownEventType, open_payload


@functools.cache
def secret_fields(descriptor: Descriptor) -> tuple[str, ...]:
    """Names of `descriptor`'s fields marked secret (not those of its sub-messages)."""
    return tuple(f.name for f in descriptor.fields if f.GetOptions().Extensions[options_pb2.secret])


def _sub_messages(message: Message) -> list[Message]:
    found: list[Message] = []
    for field, value in message.ListFields():
        sub = field.message_type
        if field.type != FieldDescriptor.TYPE_MESSAGE or sub is None or sub.GetOptions().map_entry:
            continue
        if field.is_repeated:
            found.extend(value)
        else:
            found.append(value)
    return found


def holds_secrets(message: Message) -> bool:
    """Whether any secret field of `message` (or of a message inside it) is set."""
    present = {f.name for f, _ in message.ListFields()}
    if present & set(secret_fields(message.DESCRIPTOR)):
        return True
    return any(holds_secrets(sub) for sub in _sub_messages(message))


def clear_secrets(message: Message) -> None:
    """Clears every secret field of `message`, in place and in the messages inside it."""
    for name in secret_fields(message.DESCRIPTOR):
        message.ClearField(name)
    for sub in _sub_messages(message):
        clear_secrets(sub)


def envelope_without_secrets(envelope: EventEnvelope) -> EventEnvelope | None:
    """A copy of `envelope` whose payload has no secret field; None when the payload's type is
    not known here (what in it is secret cannot be told, so none of it is handed out)."""
    try:
        payload = open_payload(envelope)
    except UnknownEventType:
        return None
    if not holds_secrets(payload):
        return envelope
    clear_secrets(payload)
    stripped = EventEnvelope()
    stripped.CopyFrom(envelope)
    stripped.payload = payload.SerializeToString()
    # The payload was upcast while it was read: it is the current version now.
    stripped.schema_version = CURRENT_SCHEMA_VERSION.get(envelope.event_type, envelope.schema_version or 1)
    return stripped
