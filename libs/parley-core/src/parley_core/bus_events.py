"""What the event bus hands out and raises: received events, append results, handler shapes,
the errors a writer or a consumer's handler meets, and the JetStream error codes it tells apart.

Every consumer accepts only what its stream's owner writes (topology.StreamSpec.event_packages):
`foreign_type` says when an event is not its owner's to write.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from parley.common.v1.envelope_pb2 import EventEnvelope

from parley_core.envelope import UnknownEventType, decode, open_payload
from parley_core.errors import OutcomeUnknown, Unavailable
from parley_core.metrics import ServiceMetrics
from parley_core.time_fields import invalid_time
from parley_core.topology import STREAMS_BY_NAME, ConsumerSpec

WRONG_LAST_SEQUENCE = 10071  # JSStreamWrongLastSequenceErrF
# The same refusal as a JetStream cluster's stream leader may give it, without the sequence
# (JSStreamWrongLastSequenceConstantErr); nats.py's own key-value store takes both as one.
WRONG_LAST_SEQUENCE_CODES = frozenset({WRONG_LAST_SEQUENCE, 10164})
# The stream's newest message is not the one an append named (Nats-Expected-Last-Msg-Id).
WRONG_LAST_MSG_ID = 10070  # JSStreamWrongLastMsgIDErrF
STREAM_NOT_FOUND = 10059
CONSUMER_NOT_FOUND = 10014
# A stream's consumer slots are all taken (JSMaximumConsumersLimitErr): by a flood, which the
# platform's consumer guard removes; a replay waits this long for a slot before it gives up.
MAX_CONSUMERS_REACHED = 10026
# Backoff while a consumer waits for its stream to be created, or for a lost consumer to be made again.
SUBSCRIBE_RETRY_MAX_S = 1.0


class AppendNotMade(Unavailable, ConnectionError):
    """The event log was unreachable for the whole of the write's time: it was not stored."""


class AppendOutcomeUnknown(OutcomeUnknown, TimeoutError):
    """A publish was sent (or buffered) but no answer came in time: it may or may not land."""


class ConcurrencyConflict(Exception):
    """The aggregate changed since it was read; reload it and decide again."""


class Refused(Exception):
    """A handler's verdict that an event must never be applied (it breaks a rule the handler
    checks, such as a marker for messages that are not the erased user's): the durable consumer
    parks it at once, with this reason, instead of retrying it."""


class RetryLater(Exception):
    """A handler could not run now for a reason outside the events (its database is down).

    The consumer keeps the batch and retries it in place, telling JetStream the events are
    still in progress, until the handler succeeds or the service stops. Unlike any other
    error it spends none of the events' redelivery budget, so an outage of any length parks
    nothing: parking is for events that are themselves bad.
    """


@dataclass(frozen=True)
class ReceivedEvent:
    envelope: EventEnvelope
    subject: str
    stream: str
    stream_seq: int
    num_delivered: int
    headers: dict[str, str]

    @cached_property
    def payload(self) -> Message:
        """The envelope's payload, opened once for every reader of this delivery (`foreign_type`
        checks it, then the handlers read it). Raises what open_payload raises."""
        return open_payload(self.envelope)

    def stored_at(self, stream: str, stream_seq: int) -> ReceivedEvent:
        """This event, sealed and open, where the stream stored it (a writer's own)."""
        stored = ReceivedEvent(self.envelope, self.subject, stream, stream_seq, self.num_delivered, self.headers)
        return already_open(stored, self.payload)


def already_open(event: ReceivedEvent, payload: Message) -> ReceivedEvent:
    """`event` with its payload given rather than decoded: a writer's own event, whose payload is
    the message it just sealed (its projection reads it as it would the decoded copy)."""
    event.__dict__["payload"] = payload  # what the cached_property stores, set ahead of it
    return event


@dataclass(frozen=True)
class Appended:
    stream_seq: int
    duplicate: bool
    # The event as the stream now holds it, for the writer's own projection (Replay.apply_own);
    # None for a duplicate, whose stored copy may differ from this attempt's.
    written: ReceivedEvent | None = None


class OwnWrites(Protocol):
    """A reader of the stream in this process told of its appends while they are on their way
    (Replay): the stream's delivery of an append usually comes before its acknowledgement, and a
    delivery of exactly the bytes published is that append, read from the copy already open."""

    def expect(self, data: bytes, sealed: ReceivedEvent) -> None: ...

    def forget(self, data: bytes) -> None: ...


EventHandler = Callable[[ReceivedEvent], Awaitable[None]]
BatchHandler = Callable[[Sequence[ReceivedEvent]], Awaitable[None]]
# Told the stream sequence of an event a durable consumer parked (or refused as foreign) instead
# of handling it: consumed all the same, so a consumer that tracks its position counts it passed.
ParkedHandler = Callable[[int], Awaitable[None]]


class ConsumerLoss(Protocol):
    """What a service does when its durable consumer disappears (deleted by an operator, or lost
    with the server's state): where the new one starts, and what follows once it exists."""

    async def resume_from(self, spec: ConsumerSpec) -> int:
        """The stream sequence the new consumer starts at (0: the stream's first event)."""

    async def recreated(self, spec: ConsumerSpec, start_seq: int) -> None:
        """Called once the consumer exists again."""


class BusConnection(Protocol):
    """What the bus's parts (appends, replays, durable consumers, parking) use of the process's
    EventBus (bus.py), named here so that none of them imports the module that composes them."""

    nc: NatsClient
    js: JetStreamContext
    service: str
    producer: str
    metrics: ServiceMetrics | None

    async def wait_for_stream(self, name: str, *, timeout: float = 30.0) -> None: ...

    async def park(self, msg: Msg, *, reason: str) -> None: ...

    async def reject_foreign(self, msg: Msg, *, reason: str) -> None: ...


def foreign_type(event: ReceivedEvent) -> str | None:
    """Why the event is not its stream's owner's to write (None: it is).

    A type the owner writes whose payload is not that protobuf, or carries a time outside the
    years 1 to 9999, is no more the owner's: its code never writes one. Handled, it would fail
    in every reader's projection and halt it for good (a replay starts at the stream's
    beginning), so a stolen credential of any service that may append to the stream could stop
    every other service that reads it.
    """
    spec = STREAMS_BY_NAME.get(event.stream)
    event_type = event.envelope.event_type
    if spec is None:
        return None
    if not spec.owner_writes(event_type):
        return (
            f"foreign event type {event_type or '(none)'!r} on {event.subject}: stream {spec.name} holds only "
            f"{', '.join(spec.event_packages)} events, written by {spec.owner}"
        )
    try:
        payload = event.payload
    except UnknownEventType:
        return None  # a newer version's type: its readers pass it (projection_dispatch)
    except DecodeError as exc:
        return f"undecodable payload: {event_type!r} on {event.subject} is not that protobuf ({exc})"
    if (field := invalid_time(event.envelope) or invalid_time(payload)) is not None:
        return f"a time no clock writes: {field} of {event_type!r} on {event.subject} is outside the years 1 to 9999"
    return None


def known_payloads(batch: Sequence[ReceivedEvent]) -> Iterator[tuple[ReceivedEvent, Message]]:
    """Each event of a batch with its payload (opened once, ReceivedEvent.payload), passing over a
    type this release does not know (a newer version's fact, during a roll-out): nothing to do here."""
    for event in batch:
        try:
            payload = event.payload
        except UnknownEventType:
            continue
        yield event, payload


def received(msg: Msg) -> ReceivedEvent:
    meta = msg.metadata
    return ReceivedEvent(
        envelope=decode(msg.data),
        subject=msg.subject,
        stream=meta.stream,
        stream_seq=meta.sequence.stream,
        num_delivered=meta.num_delivered,
        headers=dict(msg.headers or {}),
    )
