"""The event envelope: sealing, decoding by protobuf full name, and upcasting old schema versions.

Unit tests: no I/O, only the envelope module and the generated protobuf classes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from parley.common.v1.envelope_pb2 import EventEnvelope
from parley.messaging.v1.events_pb2 import MessagePosted

from parley_core import envelope as env
from parley_core.actor import Actor
from parley_core.envelope import NewEvent, UnknownEventType, decode, open_payload, seal

POSTED = MessagePosted.DESCRIPTOR.full_name


def _posted(**fields: object) -> MessagePosted:
    defaults: dict[str, object] = {
        "channel_id": "c1",
        "message_id": "m1",
        "sender_id": "u1",
        "channel_seq": 7,
        "body": "hello",
        "idempotency_key": "k1",
        "sender_name": "alice",
    }
    return MessagePosted(**{**defaults, **fields})  # type: ignore[arg-type]


@pytest.fixture
def registries() -> Iterator[None]:
    """Leave UPCASTERS and CURRENT_SCHEMA_VERSION as they were, whatever a test registers."""
    upcasters = dict(env.UPCASTERS)
    versions = dict(env.CURRENT_SCHEMA_VERSION)
    try:
        yield
    finally:
        env.UPCASTERS.clear()
        env.UPCASTERS.update(upcasters)
        env.CURRENT_SCHEMA_VERSION.clear()
        env.CURRENT_SCHEMA_VERSION.update(versions)


def test_seal_and_open_round_trip() -> None:
    payload = _posted()
    payload.sent_at.FromSeconds(1_700_000_000)
    event = NewEvent(aggregate_type="channel", aggregate_id="c1", payload=payload, actor=Actor.user("u1"))

    sealed = seal(event, aggregate_version=3, producer="messaging@0.1.0", trace_context={"traceparent": "00-ab-cd-01"})
    received = decode(sealed.SerializeToString())

    assert received.event_id == event.event_id
    assert received.event_type == POSTED == event.event_type
    assert received.schema_version == 1
    assert (received.aggregate_type, received.aggregate_id, received.aggregate_version) == ("channel", "c1", 3)
    assert received.actor == "user:u1"  # the canonical form
    assert received.producer == "messaging@0.1.0"
    assert dict(received.trace_context) == {"traceparent": "00-ab-cd-01"}
    assert received.occurred_at.seconds > 0
    opened = open_payload(received)
    assert isinstance(opened, MessagePosted)
    assert opened == payload


def test_each_new_event_gets_its_own_id() -> None:
    first = NewEvent(aggregate_type="channel", aggregate_id="c1", payload=_posted(), actor="u1")
    second = NewEvent(aggregate_type="channel", aggregate_id="c1", payload=_posted(), actor="u1")
    assert first.event_id != second.event_id


def test_unknown_event_type_is_refused() -> None:
    envelope = EventEnvelope(event_type="parley.nowhere.v9.NeverDefined", schema_version=1, payload=b"\x0a\x01x")
    with pytest.raises(UnknownEventType, match=r"parley\.nowhere\.v9\.NeverDefined"):
        open_payload(envelope)


@pytest.mark.usefixtures("registries")
def test_seal_stamps_the_current_schema_version() -> None:
    env.CURRENT_SCHEMA_VERSION[POSTED] = 2
    event = NewEvent(aggregate_type="channel", aggregate_id="c1", payload=_posted(), actor="u1")
    assert seal(event, aggregate_version=1, producer="p", trace_context={}).schema_version == 2


@pytest.mark.usefixtures("registries")
def test_upcaster_turns_a_version_1_payload_into_version_2() -> None:
    # Version 2 of MessagePosted requires sender_name; version 1 events were written without it.
    def v1_to_v2(data: bytes) -> bytes:
        old = MessagePosted.FromString(data)
        old.sender_name = old.sender_name or f"user {old.sender_id}"
        return old.SerializeToString()

    env.CURRENT_SCHEMA_VERSION[POSTED] = 2
    env.UPCASTERS[(POSTED, 1)] = v1_to_v2
    v1 = EventEnvelope(event_type=POSTED, schema_version=1, payload=_posted(sender_name="").SerializeToString())
    v2 = EventEnvelope(event_type=POSTED, schema_version=2, payload=_posted(sender_name="").SerializeToString())

    upcast = open_payload(v1)
    current = open_payload(v2)

    assert isinstance(upcast, MessagePosted)
    assert upcast.sender_name == "user u1"
    assert upcast.body == "hello"
    # An event already at the current version passes through untouched.
    assert isinstance(current, MessagePosted)
    assert current.sender_name == ""


@pytest.mark.usefixtures("registries")
def test_upcasters_chain_across_versions_and_missing_version_means_1() -> None:
    env.CURRENT_SCHEMA_VERSION[POSTED] = 3

    def appending(suffix: str) -> Callable[[bytes], bytes]:
        return lambda data: MessagePosted(body=MessagePosted.FromString(data).body + suffix).SerializeToString()

    env.UPCASTERS[(POSTED, 1)] = appending(" v2")
    env.UPCASTERS[(POSTED, 2)] = appending(" v3")
    unversioned = EventEnvelope(event_type=POSTED, payload=MessagePosted(body="v1").SerializeToString())

    opened = open_payload(unversioned)

    assert isinstance(opened, MessagePosted)
    assert opened.body == "v1 v2 v3"
