"""Times no clock writes, found wherever a protobuf message holds them (no servers)."""

from __future__ import annotations

from google.protobuf import message_factory
from google.protobuf.message import Message
from parley.auth.v1 import events_pb2 as auth_events
from parley.auth.v1.events_pb2 import SigningKeyPublished
from parley.common.v1.envelope_pb2 import EventEnvelope
from parley.messaging.v1 import events_pb2 as messaging_events
from parley.messaging.v1.events_pb2 import MessagePosted
from parley.patch.v1 import events_pb2 as patch_events
from parley.storage.v1 import events_pb2 as storage_events

from parley_core.time_fields import MAX_SECONDS, MIN_SECONDS, TIMESTAMP, invalid_time


def test_times_in_the_years_1_to_9999_pass() -> None:
    message = MessagePosted(channel_id="c1", body="hi")
    message.sent_at.seconds = MAX_SECONDS
    envelope = EventEnvelope(event_id="e1")
    envelope.occurred_at.seconds = MIN_SECONDS
    assert invalid_time(message) is None
    assert invalid_time(envelope) is None
    assert invalid_time(SigningKeyPublished(key_id="k1")) is None  # no time at all


def test_a_time_past_the_range_or_with_bad_nanos_is_named() -> None:
    late = MessagePosted(channel_id="c1")
    late.sent_at.seconds = MAX_SECONDS + 1
    early = EventEnvelope(event_id="e1")
    early.occurred_at.seconds = MIN_SECONDS - 1
    nanos = MessagePosted(channel_id="c1")
    nanos.sent_at.nanos = -1
    assert invalid_time(late) == "sent_at"
    assert invalid_time(early) == "occurred_at"
    assert invalid_time(nanos) == "sent_at"


def _plant_far_times(message: Message, depth: int = 0) -> int:
    """Put a time of 2**62 seconds in every Timestamp the message can hold (nested, repeated
    and map values too); how many were planted."""
    planted = 0
    for field in message.DESCRIPTOR.fields:
        kind = field.message_type
        if kind is None or depth > 3:
            continue
        if kind.GetOptions().map_entry:
            value_kind = kind.fields_by_name["value"].message_type
            if value_kind is not None:
                item = getattr(message, field.name)["k"]
                planted += _fill(item, value_kind.full_name == TIMESTAMP, depth)
        elif field.is_repeated:
            planted += _fill(getattr(message, field.name).add(), kind.full_name == TIMESTAMP, depth)
        else:
            planted += _fill(getattr(message, field.name), kind.full_name == TIMESTAMP, depth)
    return planted


def _fill(item: Message, is_timestamp: bool, depth: int) -> int:
    if is_timestamp:
        item.seconds = 2**62  # type: ignore[attr-defined]
        return 1
    return _plant_far_times(item, depth + 1)


def test_every_event_type_is_walked_without_error_and_each_far_time_found() -> None:
    types = [
        message
        for module in (auth_events, messaging_events, patch_events, storage_events)
        for message in module.DESCRIPTOR.message_types_by_name.values()
    ]
    assert len(types) > 40
    with_times = 0
    for descriptor in types:
        message = message_factory.GetMessageClass(descriptor)()
        assert invalid_time(message) is None, descriptor.full_name
        if _plant_far_times(message):
            with_times += 1
            assert invalid_time(message) is not None, descriptor.full_name
    assert with_times >= 3  # the walk above reached the event types that carry Timestamps
