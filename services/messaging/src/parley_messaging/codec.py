"""Channel events to and from their protobuf form on the MSG stream, and to a `NewEvent`.

The domain events mirror the protobuf messages field for field (events.py), so one table and
one pair of functions cover all of them: a new event needs only its two declarations. A time
is a `Timestamp` on the wire and unix nanoseconds in the domain.
"""

from __future__ import annotations

import uuid
from typing import Any

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from parley.messaging.v1 import events_pb2

from parley_core.actor import Actor
from parley_core.envelope import NewEvent
from parley_messaging import events
from parley_messaging.inputs import send_event_id

CHANNEL_EVENTS: dict[type[events.ChannelEvent], type[Message]] = {
    events.ChannelCreated: events_pb2.ChannelCreated,
    events.MemberJoined: events_pb2.MemberJoined,
    events.MemberLeft: events_pb2.MemberLeft,
    events.MemberInvited: events_pb2.MemberInvited,
    events.InvitationDeclined: events_pb2.InvitationDeclined,
    events.MemberKicked: events_pb2.MemberKicked,
    events.MemberBanned: events_pb2.MemberBanned,
    events.MemberUnbanned: events_pb2.MemberUnbanned,
    events.MemberRoleChanged: events_pb2.MemberRoleChanged,
    events.ChannelRenamed: events_pb2.ChannelRenamed,
    events.ChannelTopicChanged: events_pb2.ChannelTopicChanged,
    events.ChannelRetentionSet: events_pb2.ChannelRetentionSet,
    events.MessagePosted: events_pb2.MessagePosted,
    events.MessageEdited: events_pb2.MessageEdited,
    events.MessageRedacted: events_pb2.MessageRedacted,
    events.ReactionAdded: events_pb2.ReactionAdded,
    events.ReactionRemoved: events_pb2.ReactionRemoved,
    events.ReadMarkerMoved: events_pb2.ReadMarkerMoved,
    events.MessagesErased: events_pb2.MessagesErased,
    events.MessagesExpired: events_pb2.MessagesExpired,
}
SCALAR, REPEATED, TIME = 0, 1, 2


def _fields(proto: type[Message]) -> tuple[tuple[str, int], ...]:
    """Each field's name and how it converts, worked out once per message type."""
    shape = []
    for f in proto.DESCRIPTOR.fields:
        if f.message_type is not None and f.message_type.full_name == Timestamp.DESCRIPTOR.full_name:
            shape.append((f.name, TIME))
        elif f.is_repeated:
            shape.append((f.name, REPEATED))
        else:
            shape.append((f.name, SCALAR))
    return tuple(shape)


_SHAPES = {proto: _fields(proto) for proto in CHANNEL_EVENTS.values()}
# By full name: the class open_payload makes is the generated one's, but a name cannot differ.
_BY_NAME = {proto.DESCRIPTOR.full_name: (event, _SHAPES[proto]) for event, proto in CHANNEL_EVENTS.items()}


def to_proto(event: events.ChannelEvent) -> Message:
    proto = CHANNEL_EVENTS[type(event)]
    values: dict[str, Any] = {}
    for name, kind in _SHAPES[proto]:
        value = getattr(event, name)
        if kind == TIME:
            stamp = Timestamp()
            stamp.FromNanoseconds(value)
            value = stamp
        values[name] = value
    return proto(**values)


def from_proto(message: Message) -> events.ChannelEvent | None:
    """None for a message that is no channel event (a to-device one, a retired type)."""
    found = _BY_NAME.get(message.DESCRIPTOR.full_name)
    if found is None:
        return None
    cls, shape = found
    values: dict[str, Any] = {}
    for name, kind in shape:
        value = getattr(message, name)
        if kind == TIME:
            value = value.ToNanoseconds()
        elif kind == REPEATED:
            value = tuple(value)
        values[name] = value
    return cls(**values)


def event_id_of(event: events.ChannelEvent) -> str:
    """The id JetStream deduplicates by: the same send, or the same creation, has the same id
    (a concurrent retry is then dropped); any other event a fresh one."""
    if isinstance(event, events.MessagePosted):
        return send_event_id(event.channel_id, event.sender_id, event.idempotency_key)
    if isinstance(event, events.ChannelCreated):
        return uuid.uuid5(uuid.NAMESPACE_URL, f"parley:channel-created/{event.channel_id}").hex
    return uuid.uuid4().hex


def new_event(event: events.ChannelEvent, user_id: str, event_id: str = "") -> NewEvent:
    """The envelope of a channel event that the user `user_id` caused."""
    return NewEvent(
        aggregate_type="channel",
        aggregate_id=event.channel_id,
        payload=to_proto(event),
        actor=Actor.user(user_id),
        event_id=event_id or event_id_of(event),
    )
