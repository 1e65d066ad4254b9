"""The JetStream event bus: idempotent topology, optimistic appends, replays and durable consumers.

A write is one acknowledged publish: `Nats-Msg-Id` (the event id) makes a retried append a
no-op inside the stream's duplicate window, and `Nats-Expected-Last-Subject-Sequence` makes
the stream refuse an append to an aggregate that changed since it was read.

Every consumer accepts only what its stream's owner writes (topology.StreamSpec.event_packages):
an event of another type is parked, never handed to a handler, and logged as a security event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from parley.common.v1.envelope_pb2 import EventEnvelope

from parley_core import deadline, telemetry
from parley_core.envelope import NewEvent, decode, seal
from parley_core.errors import OutcomeUnknown, Unavailable
from parley_core.metrics import ServiceMetrics
from parley_core.topology import (
    PLATFORM_USER,
    STREAMS_BY_NAME,
    ConsumerSpec,
    StreamSpec,
    parked_subject,
    stream_for_subject,
)

log = logging.getLogger(__name__)

WRONG_LAST_SEQUENCE = 10071  # JSStreamWrongLastSequenceErrF
# The same refusal as a JetStream cluster's stream leader may give it, without the sequence
# (JSStreamWrongLastSequenceConstantErr); nats.py's own key-value store takes both as one.
WRONG_LAST_SEQUENCE_CODES = frozenset({WRONG_LAST_SEQUENCE, 10164})
STREAM_NOT_FOUND = 10059
CONSUMER_NOT_FOUND = 10014
# A stream's consumer slots are all taken (JSMaximumConsumersLimitErr): by a flood, which the
# platform's consumer guard removes; a replay waits this long for a slot before it gives up.
MAX_CONSUMERS_REACHED = 10026
NO_CONSUMER_SLOT_WAIT_S = 60.0
MARKER_ATTEMPTS = 5
# Backoff while a consumer waits for its stream to be created, or for a lost consumer to be made again.
SUBSCRIBE_RETRY_MAX_S = 1.0
# How long one fetch of a durable consumer waits for events: also how soon it notices a stop.
FETCH_WAIT_S = 0.5
# A lingering fetch shorter than this is not worth the round trip (nats-py also needs more than
# its 0.1 ms expiry margin).
MIN_FETCH_WAIT_S = 0.002
# Within a linger, events gather this long (at most a third of the linger) before each fetch.
LINGER_GATHER_MAX_S = 0.01
# Backoff of a batch held while its handler waits for a dependency (see RetryLater); the
# longest pause stays well under any ack_wait, and every pause renews the ack deadline.
RETRY_LATER_FIRST_S = 0.2
RETRY_LATER_MAX_S = 5.0
# A replay's ordered consumer lost with its server (a restarted nats-server keeps no ordered
# consumer) is noticed after two missed heartbeats and made again: after 2-4 s at this interval.
REPLAY_HEARTBEAT_S = 1.0
# One publish waits this long for its ack before it is sent again (same Nats-Msg-Id).
PUBLISH_TIMEOUT_S = 5.0
PUBLISH_RETRY_MAX_S = 0.5
# A publish that failed with one of these may have reached the server, or may yet reach it.
MAYBE_SENT = (nats.errors.TimeoutError, nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError)
# 503 answers that mean "not now" (no cluster leader yet, JetStream still starting): retried. Any
# other 503 is the stream's own refusal (its limits, its store), which waiting does not change.
TEMPORARILY_UNAVAILABLE = frozenset({10008, 10076})  # JSClusterNotAvailErr, JSNotEnabledErr


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


@dataclass(frozen=True)
class Appended:
    stream_seq: int
    duplicate: bool
    # The event as the stream now holds it, for the writer's own projection (Replay.apply_own);
    # None for a duplicate, whose stored copy may differ from this attempt's.
    written: ReceivedEvent | None = None


EventHandler = Callable[[ReceivedEvent], Awaitable[None]]
BatchHandler = Callable[[Sequence[ReceivedEvent]], Awaitable[None]]


class ConsumerLoss(Protocol):
    """What a service does when its durable consumer disappears (deleted by an operator, or lost
    with the server's state): where the new one starts, and what follows once it exists."""

    async def resume_from(self, spec: ConsumerSpec) -> int:
        """The stream sequence the new consumer starts at (0: the stream's first event)."""

    async def recreated(self, spec: ConsumerSpec, start_seq: int) -> None:
        """Called once the consumer exists again."""


def foreign_type(event: ReceivedEvent) -> str | None:
    """Why the event is not its stream's owner's to write (None: it is)."""
    spec = STREAMS_BY_NAME.get(event.stream)
    event_type = event.envelope.event_type
    if spec is None or spec.owner_writes(event_type):
        return None
    return (
        f"foreign event type {event_type or '(none)'!r} on {event.subject}: stream {spec.name} holds only "
        f"{', '.join(spec.event_packages)} events, written by {spec.owner}"
    )


@dataclass
class _FreshlyNamed(api.ConsumerConfig):
    """An ordered consumer's configuration that names each consumer made from it afresh.

    nats-py creates an ordered consumer from this, and again after any gap (a reset), each time
    from a copy (ConsumerConfig.evolve, which runs __post_init__). A name makes it use the API
    subject that carries the name ($JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>), the only
    creation the services' NATS permissions allow; a new one for every creation, because a
    reset creates its consumer while the old one may still exist. The name's first part (before
    "_") is the service's, so an operator sees whose consumer it is.
    """

    def __post_init__(self) -> None:
        owner = (self.name or "parley").partition("_")[0]
        self.name = f"{owner}_{uuid.uuid4().hex[:20]}"


def _received(msg: Msg) -> ReceivedEvent:
    meta = msg.metadata
    return ReceivedEvent(
        envelope=decode(msg.data),
        subject=msg.subject,
        stream=meta.stream,
        stream_seq=meta.sequence.stream,
        num_delivered=meta.num_delivered,
        headers=dict(msg.headers or {}),
    )


class EventBus:
    def __init__(self, nc: NatsClient, *, service: str, producer: str) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.service = service
        self.producer = producer
        self._subscriptions: list[Replay | DurableConsumer] = []
        # The runner's; a bus made elsewhere (tools, tests) counts nothing.
        self.metrics: ServiceMetrics | None = None

    async def ensure_streams(self, specs: Iterable[StreamSpec], *, replicas: int = 1) -> None:
        """Create or update each stream to its declared configuration (safe to repeat).

        `replicas` > 1 on a JetStream cluster keeps each stream on that many nodes, so an
        acknowledged append survives the loss of a minority of them. Only the platform identity
        re-configures a stream: a service creates its own where none exists and otherwise takes
        it as the platform set it, since its NATS user may not change a stream's settings
        (topology.permissions_for).
        """
        for spec in specs:
            config = api.StreamConfig(
                name=spec.name,
                subjects=list(spec.subjects),
                retention=api.RetentionPolicy.LIMITS,
                storage=api.StorageType.FILE,
                duplicate_window=spec.duplicate_window_s,
                allow_direct=True,
                num_replicas=replicas,
                max_bytes=spec.max_bytes,
                max_msgs=spec.max_msgs,
                discard=api.DiscardPolicy.NEW if spec.discard_new else api.DiscardPolicy.OLD,
            )
            try:
                await self.js.add_stream(config)
            except nats.js.errors.BadRequestError:
                # Exists with another configuration: bring it in line with the declaration.
                if self.service == PLATFORM_USER:
                    await self.js.update_stream(config)
                else:
                    log.info("stream %s exists with other settings; the platform keeps them", spec.name)

    async def ensure_streams_when_ready(
        self, specs: Iterable[StreamSpec], *, replicas: int = 1, timeout: float = 60.0
    ) -> None:
        """`ensure_streams` once JetStream can take it: a new cluster first elects a meta leader."""
        deadline = asyncio.get_running_loop().time() + timeout
        delay = 0.1
        while True:
            try:
                await self.ensure_streams(specs, replicas=replicas)
                return
            except (nats.errors.Error, TimeoutError):
                if asyncio.get_running_loop().time() > deadline:
                    raise
            await asyncio.sleep(delay)  # meta-leader election: retried with backoff until the deadline
            delay = min(delay * 2, 1.0)

    async def wait_for_stream(self, name: str, *, timeout: float = 30.0) -> None:
        """Readers may start before the owner created its stream; wait for it to appear."""
        delay = 0.05
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                await self.js.stream_info(name)
                return
            except nats.js.errors.NotFoundError:
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"stream {name} was not created within {timeout:.0f}s") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def append(
        self,
        subject: str,
        event: NewEvent,
        *,
        aggregate_version: int,
        expected_last_subject_seq: int | None,
        expected_last_stream_seq: int | None = None,
    ) -> Appended:
        """Append one event. `expected_last_subject_seq=0` means the subject must be empty.

        `expected_last_stream_seq` orders the append after the whole stream's last message
        (a single-writer chain over a stream, such as the audit chain on SEC).
        """
        trace_headers = telemetry.current_trace_headers()
        envelope = seal(event, aggregate_version=aggregate_version, producer=self.producer, trace_context=trace_headers)
        headers = {**trace_headers, "Nats-Msg-Id": event.event_id, "Parley-Event-Type": event.event_type}
        if expected_last_subject_seq is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(expected_last_subject_seq)
        if expected_last_stream_seq is not None:
            headers["Nats-Expected-Last-Sequence"] = str(expected_last_stream_seq)
        try:
            ack = await self._publish_confirmed(subject, envelope.SerializeToString(), headers)
        except nats.js.errors.APIError as exc:
            if exc.err_code not in WRONG_LAST_SEQUENCE_CODES:
                raise
            # The server checks the expected sequence before Nats-Msg-Id, so a retry of an
            # append that did land (its ack was lost) looks like a conflict: it is our own write.
            if (earlier := await self._own_last_write(stream_for_subject(subject).name, subject, event)) is not None:
                return Appended(stream_seq=earlier, duplicate=True)
            raise ConcurrencyConflict(f"{subject} changed since it was read") from exc
        if self.metrics is not None and not ack.duplicate:
            self.metrics.events_appended.labels(ack.stream).inc()
        if ack.duplicate:
            return Appended(stream_seq=ack.seq, duplicate=True)
        written = ReceivedEvent(
            envelope=envelope,
            subject=subject,
            stream=ack.stream,
            stream_seq=ack.seq,
            num_delivered=1,
            headers=headers,
        )
        return Appended(stream_seq=ack.seq, duplicate=False, written=written)

    async def _publish_confirmed(self, subject: str, data: bytes, headers: dict[str, str]) -> api.PubAck:
        """One publish whose outcome is known when this returns or raises AppendNotMade, else AppendOutcomeUnknown.

        nats-py keeps what is published while it reconnects in a buffer that it sends once
        connected again, long after the publish timed out: a write that lands after its caller
        was told it failed. So nothing is published while disconnected (the caller waits for the
        connection, within its deadline), and a publish whose answer did not come (a timeout, a
        connection lost in flight) is sent again with the same Nats-Msg-Id once connected: the
        buffered copy goes first on the same connection, so the second answer (stored, or a
        duplicate of the first) settles what happened. Only a deadline that passes before any
        answer leaves the outcome unknown, and the error says so.
        """
        loop = asyncio.get_running_loop()
        give_up = deadline.give_up_at()
        maybe_sent = False
        delay = 0.02
        while True:
            if self.nc.is_closed or self.nc.is_draining_pubs:  # this service is stopping: nothing more goes out
                raise AppendOutcomeUnknown() if maybe_sent else AppendNotMade("this instance is stopping; retry")
            left = give_up - loop.time()
            if left > 0 and self.nc.is_connected:
                try:
                    return await self.js.publish(subject, data, headers=headers, timeout=min(PUBLISH_TIMEOUT_S, left))
                except nats.js.errors.NoStreamResponseError:
                    pass  # nobody took it (a stream without a leader yet): not stored; try again
                except nats.js.errors.ServiceUnavailableError as exc:
                    if exc.err_code and exc.err_code not in TEMPORARILY_UNAVAILABLE:
                        raise AppendNotMade(
                            f"the event log refused the change ({exc.description}); nothing was stored"
                        ) from exc
                except MAYBE_SENT:
                    maybe_sent = True  # on its way, or in nats-py's buffer: it may still land
            left = give_up - loop.time()
            if left <= 0:
                if maybe_sent:
                    raise AppendOutcomeUnknown()
                raise AppendNotMade(
                    "the event log is unreachable; nothing was stored, retry shortly"
                    if not self.nc.is_connected
                    else "the event log did not take the change; nothing was stored, retry shortly"
                )
            await asyncio.sleep(min(delay, left))  # waiting for the connection or a stream leader, within the deadline
            delay = min(delay * 2, PUBLISH_RETRY_MAX_S)

    async def _own_last_write(self, stream: str, subject: str, event: NewEvent) -> int | None:
        """Stream sequence of the subject's newest message if it is `event` itself."""
        try:
            raw = await self.js.get_last_msg(stream, subject, direct=True)
        except nats.js.errors.NotFoundError:
            return None
        if (raw.headers or {}).get("Nats-Msg-Id") == event.event_id:
            return int(raw.seq or 0)
        return None

    async def last_subject_seq(self, stream: str, subject: str) -> int:
        """Stream sequence of the newest event on a subject, 0 when there is none."""
        try:
            raw = await self.js.get_last_msg(stream, subject, direct=True)
        except nats.js.errors.NotFoundError:
            return 0
        return int(raw.seq or 0)

    async def replay(
        self,
        *,
        stream: str,
        filter_subject: str,
        handler: EventHandler,
        start_seq: int | None = None,
        only_new: bool = False,
        stop_with_service: bool = True,
        heartbeat_s: float = REPLAY_HEARTBEAT_S,
    ) -> Replay:
        """Feed every event on `filter_subject` to `handler`, in stream order, then keep following.

        Backed by an ordered consumer, which the client recreates by itself after a gap, or when
        two heartbeats (`heartbeat_s` apart) did not come: it was lost. A replay that outlives
        only one call (a client's live stream) passes stop_with_service=False and stops it itself.
        """
        replay = Replay(self, stream=stream, filter_subject=filter_subject, handler=handler, heartbeat_s=heartbeat_s)
        await replay.start(start_seq=start_seq, only_new=only_new)
        if stop_with_service:
            self._subscriptions.append(replay)
        return replay

    async def consume(
        self,
        spec: ConsumerSpec,
        handler: BatchHandler,
        *,
        batch: int = 100,
        linger_s: float = 0.0,
        on_loss: ConsumerLoss | None = None,
    ) -> DurableConsumer:
        """Feed the durable consumer's events to `handler` in batches until the service stops.

        A stream its owner has not created yet is waited for in the background (no event can
        be waiting on it). A consumer that disappears is made again: from where `on_loss` says,
        or from the stream's start. With `linger_s`, a batch that is not full waits up to that
        long after its first event for more (a group commit: fewer, larger batches for a
        handler whose cost is mostly per batch, at that much more delay).
        """
        consumer = DurableConsumer(self, spec=spec, handler=handler, batch=batch, linger_s=linger_s, on_loss=on_loss)
        await consumer.start()
        self._subscriptions.append(consumer)
        return consumer

    async def park(self, msg: Msg, *, reason: str) -> None:
        """Move a poison event aside, where `parley parked` shows it, and stop its redelivery."""
        meta = msg.metadata
        headers = {
            **_parked_headers(msg, reason),
            "Nats-Msg-Id": f"parked-{meta.stream}-{meta.sequence.stream}-{meta.consumer}",
        }
        await self.js.publish(parked_subject(self.service, meta.stream), msg.data, headers=headers)
        await msg.term()
        if self.metrics is not None:
            self.metrics.parked.labels(meta.stream).inc()
        log.error("parked poison event", extra={"subject": msg.subject, "seq": meta.sequence.stream, "reason": reason})

    async def reject_foreign(self, msg: Msg, *, reason: str) -> None:
        """Park an event its stream's owner never writes, once per service, as a security event.

        No service can append to auth's audit chain (SEC), so the signal is this service's own:
        the parked copy (kind `foreign-event`, on parley.parked.<service>.<stream>.<seq>, where a
        SIEM follows parley.parked.>) and an error log line with security_event set. The subject
        must be empty for the copy to land, so the service's other consumers of the stream, and
        its next start, park it no second time.
        """
        meta = msg.metadata
        subject = f"{parked_subject(self.service, meta.stream)}.{meta.sequence.stream}"
        headers = {
            **_parked_headers(msg, reason),
            "Parley-Parked-Kind": FOREIGN_EVENT,
            "Nats-Expected-Last-Subject-Sequence": "0",
        }
        try:
            await self.js.publish(subject, msg.data, headers=headers)
        except nats.js.errors.APIError as exc:
            if exc.err_code not in WRONG_LAST_SEQUENCE_CODES:
                raise
            return  # parked already (by another consumer of ours, or before a restart)
        log.error(
            "security: refused an event its stream's owner never writes",
            extra={
                "security_event": "foreign_event_parked",
                "subject": msg.subject,
                "stream": meta.stream,
                "seq": meta.sequence.stream,
                "reason": reason,
            },
        )

    async def append_after_last(self, subject: str, event: NewEvent) -> int:
        """Append at the subject's newest event with the next aggregate version, for an aggregate
        this service keeps no version of (a marker, an audited record); returns the event's stream
        sequence (the earlier one when the event id was appended already)."""
        stream = stream_for_subject(subject).name
        for _ in range(MARKER_ATTEMPTS):
            try:
                raw = await self.js.get_last_msg(stream, subject, direct=True)
                last, version = int(raw.seq or 0), decode(raw.data or b"").aggregate_version
            except nats.js.errors.NotFoundError:
                last, version = 0, 0
            try:
                appended = await self.append(
                    subject, event, aggregate_version=version + 1, expected_last_subject_seq=last
                )
            except ConcurrencyConflict:
                continue  # appended to meanwhile: read the new last event and try again
            return appended.stream_seq  # a duplicate's ack names the earlier append's sequence
        raise ConcurrencyConflict(f"{subject} kept changing; try again")

    async def stop_consumers(self) -> None:
        """Stop every replay and durable consumer after their in-flight work, all at once (each
        durable consumer may be waiting out its fetch)."""
        for sub in self._subscriptions:
            if isinstance(sub, DurableConsumer):
                sub.stopping()
        for sub in reversed(self._subscriptions):
            await sub.stop()
        self._subscriptions.clear()


FOREIGN_EVENT = "foreign-event"  # Parley-Parked-Kind of an event its stream's owner never writes


def _parked_headers(msg: Msg, reason: str) -> dict[str, str]:
    meta = msg.metadata
    return {
        "Parley-Parked-Reason": reason[:500],
        "Parley-Original-Subject": msg.subject,
        "Parley-Original-Stream": meta.stream,
        "Parley-Original-Sequence": str(meta.sequence.stream),
        "Parley-Consumer": meta.consumer or "",
    }


@dataclass
class Replay:
    bus: EventBus
    stream: str
    filter_subject: str
    handler: EventHandler
    heartbeat_s: float = REPLAY_HEARTBEAT_S
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)
    last_seq: int = 0
    _sub: JetStreamContext.PushSubscription | None = None
    _progress: asyncio.Condition = field(default_factory=asyncio.Condition)
    # Stream sequences this process applied at once (apply_own), ahead of the replay's position.
    _applied_ahead: set[int] = field(default_factory=set)
    _delivering: int = 0

    async def start(self, *, start_seq: int | None, only_new: bool) -> None:
        await self.bus.wait_for_stream(self.stream)
        self._sub = await self._subscribe(start_seq=start_seq, only_new=only_new)
        info = await self._sub.consumer_info()
        if info.num_pending == 0 and (info.delivered is None or not info.delivered.consumer_seq):
            self.caught_up.set()

    async def _subscribe(self, *, start_seq: int | None, only_new: bool) -> JetStreamContext.PushSubscription:
        """The ordered consumer, made again with backoff while the stream has no free consumer slot
        (another reader's credential filled them: the platform's consumer guard frees them)."""
        loop = asyncio.get_running_loop()
        give_up, delay = loop.time() + NO_CONSUMER_SLOT_WAIT_S, 0.05
        while True:
            config = _FreshlyNamed(name=self.bus.service, idle_heartbeat=self.heartbeat_s)
            if start_seq:
                config.deliver_policy, config.opt_start_seq = api.DeliverPolicy.BY_START_SEQUENCE, start_seq
            elif only_new:
                config.deliver_policy = api.DeliverPolicy.NEW
            try:
                return await self.bus.js.subscribe(
                    self.filter_subject, stream=self.stream, ordered_consumer=True, config=config, cb=self._on_msg
                )
            except nats.js.errors.APIError as exc:
                if exc.err_code != MAX_CONSUMERS_REACHED or loop.time() > give_up:
                    raise
                log.warning(
                    "no free consumer slot on the stream; retrying",
                    extra={"stream": self.stream, "filter": self.filter_subject},
                )
            await asyncio.sleep(delay)  # until the guard has freed a slot, within NO_CONSUMER_SLOT_WAIT_S
            delay = min(delay * 2, SUBSCRIBE_RETRY_MAX_S)

    async def _on_msg(self, msg: Msg) -> None:
        try:
            event = _received(msg)
        except Exception:
            # Bytes no owner's code writes (a stolen credential's junk): parked and passed, so
            # junk at a stream's end cannot keep every reader from ever catching up at start.
            log.exception("undecodable event skipped by replay", extra={"subject": msg.subject})
            try:
                await self.bus.reject_foreign(msg, reason="undecodable: not a Parley event envelope")
            except Exception:  # not parked (NATS trouble); passed all the same
                log.exception("an undecodable event was not parked", extra={"subject": msg.subject})
            await self._passed(msg.metadata.sequence.stream, msg.metadata.num_pending)
            return
        if self._applied_ahead and min(self._applied_ahead) < event.stream_seq:
            # Applied at once, then deleted from the stream (an erasure) before the replay reached it.
            self._applied_ahead = {seq for seq in self._applied_ahead if seq >= event.stream_seq}
        if event.stream_seq in self._applied_ahead:
            self._applied_ahead.discard(event.stream_seq)  # our own write, applied when it was acknowledged
        elif (foreign := foreign_type(event)) is not None:
            try:
                await self.bus.reject_foreign(msg, reason=foreign)
            except Exception:  # not parked (NATS trouble); never applied all the same
                log.exception("a foreign event was not parked", extra={"subject": msg.subject, "reason": foreign})
        else:
            self._delivering = event.stream_seq
            with telemetry.continued_from(event.headers, f"apply {event.envelope.event_type}", subject=msg.subject):
                await self._handle(event)
        if self.bus.metrics is not None:
            self.bus.metrics.events_consumed.labels(self.stream).inc()
        await self._passed(event.stream_seq, msg.metadata.num_pending)

    async def _passed(self, stream_seq: int, num_pending: int) -> None:
        """The replay is past `stream_seq`: read-your-writes waiters and the caught-up flag see it."""
        async with self._progress:
            self.last_seq = stream_seq
            self._progress.notify_all()
        if num_pending == 0:
            self.caught_up.set()

    async def _handle(self, event: ReceivedEvent) -> None:
        try:
            await self.handler(event)
        except Exception:
            # A projection must not die on one bad event; the event stays visible in the log.
            log.exception("projection failed to apply event", extra={"subject": event.subject, "seq": event.stream_seq})

    async def apply_own(self, appended: Appended, timeout: float = 10.0) -> None:
        """Read-your-writes without the round trip: apply this process's acknowledged append now.

        The replay skips the event when it arrives. Sound for an append that expected its
        subject's last sequence: the stream took it right after the event the writer decided
        on, which the projection has applied, so the aggregate sees its events in stream order
        (other aggregates' earlier events may still be on their way, as they always may be).
        A duplicate (its stored copy may be an earlier attempt's) is waited for instead.
        """
        written = appended.written
        if written is None:
            await self.wait_for_seq(appended.stream_seq, timeout)
            return
        seq = written.stream_seq
        if seq <= self.last_seq or seq == self._delivering or seq in self._applied_ahead:
            return  # the replay got there first
        self._applied_ahead.add(seq)
        await self._handle(written)

    async def wait_for_seq(self, stream_seq: int, timeout: float = 10.0) -> None:
        """Read-your-writes: wait until this replay has applied the event at `stream_seq`
        (within the call's deadline too: a timeout is then answered, not cut off)."""
        timeout = max(0.05, min(timeout, deadline.give_up_at(timeout) - asyncio.get_running_loop().time()))
        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(lambda: self.last_seq >= stream_seq), timeout)

    async def wait_caught_up(self, timeout: float = 30.0) -> None:
        """Until every event matching the filter at subscription time has been applied.

        `timeout` bounds a stall, not the whole replay: while events keep being applied the wait
        goes on, since a long stream on a loaded host (a canary started after thousands of sends)
        takes as long as it takes; whoever starts the instance bounds its start as a whole (the
        node agent's healthy_s). A replay that applied nothing for `timeout` seconds fails.

        Normally the last delivered event says so (num_pending 0). If that event was deleted
        from the stream before delivery (an erasure), no event ever says so: the consumer's own
        state is asked as well, once a second, until the deadline.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        progress = self.last_seq
        while not self.caught_up.is_set():
            if self.last_seq != progress:
                progress, deadline = self.last_seq, loop.time() + timeout
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(
                    f"replay of {self.stream} ({self.filter_subject}) not caught up: no event applied for"
                    f" {timeout:.0f}s (at stream sequence {self.last_seq})"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.caught_up.wait(), min(1.0, left))
            if not self.caught_up.is_set() and await self._nothing_pending():
                self.caught_up.set()

    async def _nothing_pending(self) -> bool:
        if self._sub is None:
            return False
        try:
            info = await self._sub.consumer_info()
        except nats.errors.Error:
            return False
        delivered = info.delivered.stream_seq if info.delivered is not None and info.delivered.stream_seq else 0
        return info.num_pending == 0 and self.last_seq >= delivered

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):  # connection already closing
                await self._sub.unsubscribe()
            self._sub = None


def durable_config(spec: ConsumerSpec, start_seq: int = 0) -> api.ConsumerConfig:
    """A declared durable consumer as its service makes it (and the platform, before it starts)."""
    return api.ConsumerConfig(
        name=spec.durable,
        durable_name=spec.durable,
        ack_policy=api.AckPolicy.EXPLICIT,
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE if start_seq > 1 else api.DeliverPolicy.ALL,
        opt_start_seq=start_seq if start_seq > 1 else None,
        max_deliver=spec.max_deliver,
        ack_wait=spec.ack_wait_s,
        filter_subject=spec.filter_subject,
        max_ack_pending=10_000,
    )


@dataclass
class DurableConsumer:
    bus: EventBus
    spec: ConsumerSpec
    handler: BatchHandler
    batch: int
    linger_s: float = 0.0
    on_loss: ConsumerLoss | None = None
    _task: asyncio.Task[None] | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _sub: JetStreamContext.PullSubscription | None = None

    def _config(self, start_seq: int = 0) -> api.ConsumerConfig:
        return durable_config(self.spec, start_seq)

    async def start(self) -> None:
        try:
            subscribed = await self._subscribe()
        except nats.js.errors.APIError as exc:
            if exc.err_code != MAX_CONSUMERS_REACHED:
                raise
            log.warning("no free consumer slot on the stream; retrying", extra={"consumer": self.spec.durable})
            subscribed = False
        if subscribed:
            self._task = asyncio.create_task(self._run(), name=f"consumer-{self.spec.durable}")
        else:
            log.info("its consumer starts once it can be made", extra={"consumer": self.spec.durable})
            self._task = asyncio.create_task(self._subscribe_then_run(), name=f"consumer-{self.spec.durable}")

    async def _subscribe(self) -> bool:
        """Bind to the durable (created if missing, an existing one kept as it is); False while
        its stream does not exist. No stream_info first: a reader of only this consumer's
        subjects may not ask for it."""
        try:
            self._sub = await self.bus.js.pull_subscribe(
                self.spec.filter_subject, durable=self.spec.durable, stream=self.spec.stream, config=self._config()
            )
        except nats.js.errors.NotFoundError as exc:
            if exc.err_code != STREAM_NOT_FOUND:
                raise
            return False
        return True

    async def _subscribe_then_run(self) -> None:
        delay = 0.05
        while not self._stopping.is_set():
            try:
                if await self._subscribe():
                    await self._run()
                    return
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning(
                    "creating the consumer failed, retrying", extra={"consumer": self.spec.durable, "error": str(exc)}
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, SUBSCRIBE_RETRY_MAX_S)

    async def wait_drained(self, timeout: float = 30.0) -> bool:
        """Until every event on the stream now has been handled (acknowledged or parked): a service
        that acts on facts does so before it serves. False if that takes longer than `timeout`."""
        if self._sub is None:
            return True  # its stream does not exist yet: nothing can be waiting
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + timeout, 0.02
        while True:
            info = await self._sub.consumer_info()
            if not info.num_pending and not info.num_ack_pending:
                return True
            if loop.time() > deadline:
                return False
            await asyncio.sleep(delay)  # a consumer's state is only polled; bounded by the deadline
            delay = min(delay * 2, 0.5)

    async def _run(self) -> None:
        assert self._sub is not None
        while not self._stopping.is_set():
            try:
                msgs = await self._sub.fetch(self.batch, timeout=FETCH_WAIT_S)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except nats.errors.Error as exc:
                if self._stopping.is_set():
                    return
                if await self._is_lost():
                    await self._recreate()
                    continue
                log.warning("fetch failed, retrying", extra={"consumer": self.spec.durable, "error": str(exc)})
                await asyncio.sleep(0.5)
                continue
            if self.linger_s > 0 and len(msgs) < self.batch:
                msgs += await self._more(self.batch - len(msgs))
            try:
                await self._process(msgs)
            except Exception:
                # Parking or acking failed (e.g. NATS trouble, no PARKED stream). The consumer
                # must outlive it: events left unacked come back after ack_wait.
                log.exception(
                    "batch not settled; its unacked events will be redelivered", extra={"consumer": self.spec.durable}
                )
                await asyncio.sleep(0.5)

    async def _more(self, wanted: int) -> list[Msg]:
        """Up to `wanted` more events, arriving within the linger. A fetch answers as soon as
        one event is there, so at a steady trickle each fetch brings one; without this wait the
        handler would run (and storage commit) once per event."""
        assert self._sub is not None
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.linger_s
        gather_s = min(self.linger_s / 3, LINGER_GATHER_MAX_S)
        more: list[Msg] = []
        while len(more) < wanted and not self._stopping.is_set():
            # Events gather a moment before each fetch: a fetch is a request and a status reply
            # over NATS, and it answers as soon as one event is there, so fetching at once cost
            # both per event of a steady flow (the flow's batch is the same either way).
            await asyncio.sleep(min(gather_s, give_up - loop.time() - MIN_FETCH_WAIT_S))
            left = give_up - loop.time()
            if left < MIN_FETCH_WAIT_S:
                break
            try:
                more += await self._sub.fetch(wanted - len(more), timeout=min(left, FETCH_WAIT_S))
            except (TimeoutError, nats.errors.TimeoutError):
                continue  # nothing within this wait; the linger may have time left
            except nats.errors.Error:
                break  # the batch goes as it is; the next fetch meets the trouble
        return more

    async def _is_lost(self) -> bool:
        """The durable no longer exists on the server (a fetch to it fails as no one answers)."""
        try:
            await self.bus.js.consumer_info(self.spec.stream, self.spec.durable)
        except nats.js.errors.NotFoundError as exc:
            return exc.err_code == CONSUMER_NOT_FOUND
        except (nats.errors.Error, TimeoutError):
            return False  # NATS itself is away: a fetch failure like any other
        return False

    async def _recreate(self) -> None:
        """Make the lost durable again, where `on_loss` says (else from the stream's start)."""
        log.error("durable consumer lost; creating it again", extra={"consumer": self.spec.durable})
        start_seq = await self.on_loss.resume_from(self.spec) if self.on_loss is not None else 0
        delay = 0.05
        while not self._stopping.is_set():
            try:
                await self.bus.js.add_consumer(self.spec.stream, self._config(start_seq))
                break
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning(
                    "creating the lost consumer failed, retrying",
                    extra={"consumer": self.spec.durable, "error": str(exc)},
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, SUBSCRIBE_RETRY_MAX_S)
        else:
            return
        log.warning(
            "durable consumer created again", extra={"consumer": self.spec.durable, "start_seq": max(start_seq, 1)}
        )
        if self.on_loss is not None:
            await self.on_loss.recreated(self.spec, max(start_seq, 1))

    async def _process(self, msgs: list[Msg]) -> None:
        decoded: list[tuple[Msg, ReceivedEvent]] = []
        for msg in msgs:
            try:
                event = _received(msg)
            except Exception as exc:
                await self.bus.park(msg, reason=f"undecodable envelope: {exc}")
                continue
            if (foreign := foreign_type(event)) is not None:
                await self.bus.reject_foreign(msg, reason=foreign)
                await msg.term()
                continue
            decoded.append((msg, event))
        if not decoded:
            return
        try:
            if not await self._handle_holding([event for _, event in decoded], [msg for msg, _ in decoded]):
                return  # stopping while the handler waits for its dependency: redelivered later
        except Exception:
            log.warning("batch failed; retrying its events one by one", exc_info=True)
            for msg, event in decoded:
                await self._process_one(msg, event)
            return
        for msg, event in decoded:
            await msg.ack()
            self._count(event)

    def _count(self, event: ReceivedEvent) -> None:
        if (metrics := self.bus.metrics) is not None:
            metrics.events_consumed.labels(self.spec.stream).inc()
            if event.num_delivered > 1:
                metrics.redeliveries.labels(self.spec.durable).inc()

    async def _handle_holding(self, events: list[ReceivedEvent], msgs: list[Msg]) -> bool:
        """Run the handler; on RetryLater hold the batch and retry it. False if stopped first."""
        delay = RETRY_LATER_FIRST_S
        while True:
            try:
                await self.handler(events)
                return True
            except RetryLater as exc:
                if self._stopping.is_set():
                    return False
                log.warning(
                    "handler unavailable; holding the batch and retrying",
                    extra={"consumer": self.spec.durable, "events": len(events), "error": str(exc)},
                )
            # Keep the events ours while we wait: JetStream would otherwise redeliver them.
            for msg in msgs:
                with contextlib.suppress(nats.errors.Error):
                    await msg.in_progress()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, RETRY_LATER_MAX_S)

    async def _process_one(self, msg: Msg, event: ReceivedEvent) -> None:
        try:
            with telemetry.continued_from(event.headers, f"consume {event.envelope.event_type}", subject=msg.subject):
                if not await self._handle_holding([event], [msg]):
                    return
        except Refused as exc:
            await self.bus.park(msg, reason=f"refused: {exc}")
            return
        except Exception as exc:
            if event.num_delivered >= self.spec.max_deliver:
                await self.bus.park(msg, reason=repr(exc))
            else:
                # Exponential backoff between redeliveries, bounded by max_deliver.
                await msg.nak(delay=min(0.2 * 2**event.num_delivered, 30.0))
            return
        await msg.ack()
        self._count(event)

    def stopping(self) -> None:
        """Take no new batch from now on (stop() then waits for the one in flight)."""
        self._stopping.set()

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None
