"""The JetStream event bus: idempotent topology, optimistic appends, replays and durable consumers.

One EventBus per process, over its NATS connection. What it does lives in one module per job:
bus_append (writes), bus_replay with projection_dispatch (projections), bus_durable (durable
consumers), bus_parking (events set aside) and bus_events (what they share); the names other
code uses are re-exported here.

A process reads each stream its projections need once: `follow` adds a projection to the
process's one replay of that stream, which `start_following` starts once every projection of
the process is added; that replay's dispatcher applies each event to all of them in order,
and halts (health NOT_SERVING, `on_halt`) rather than skip an event one of them failed on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext, api

from parley_core import bus_append, bus_parking
from parley_core.bus_append import MARKER_ATTEMPTS, PUBLISH_TIMEOUT_S
from parley_core.bus_durable import DurableConsumer, durable_config
from parley_core.bus_events import (
    CONSUMER_NOT_FOUND,
    MAX_CONSUMERS_REACHED,
    STREAM_NOT_FOUND,
    WRONG_LAST_SEQUENCE,
    WRONG_LAST_SEQUENCE_CODES,
    Appended,
    AppendNotMade,
    AppendOutcomeUnknown,
    BatchHandler,
    ConcurrencyConflict,
    ConsumerLoss,
    EventHandler,
    ParkedHandler,
    ReceivedEvent,
    Refused,
    RetryLater,
    foreign_type,
)
from parley_core.bus_parking import FOREIGN_EVENT
from parley_core.bus_replay import REPLAY_HEARTBEAT_S, Replay
from parley_core.metrics import ServiceMetrics
from parley_core.projection_dispatch import Dispatcher, Halt, OnHalt, ProjectionHalted
from parley_core.topology import PLATFORM_USER, ConsumerSpec, StreamSpec

__all__ = [
    "CONSUMER_NOT_FOUND",
    "FOREIGN_EVENT",
    "MARKER_ATTEMPTS",
    "MAX_CONSUMERS_REACHED",
    "PUBLISH_TIMEOUT_S",
    "STREAM_NOT_FOUND",
    "WRONG_LAST_SEQUENCE",
    "WRONG_LAST_SEQUENCE_CODES",
    "AppendNotMade",
    "AppendOutcomeUnknown",
    "Appended",
    "BatchHandler",
    "ConcurrencyConflict",
    "ConsumerLoss",
    "DurableConsumer",
    "EventBus",
    "EventHandler",
    "Halt",
    "ParkedHandler",
    "ProjectionHalted",
    "ReceivedEvent",
    "Refused",
    "Replay",
    "RetryLater",
    "durable_config",
    "foreign_type",
]

log = logging.getLogger(__name__)


class EventBus:
    def __init__(self, nc: NatsClient, *, service: str, producer: str) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.service = service
        self.producer = producer
        self._subscriptions: list[Replay | DurableConsumer] = []
        # The process's one replay per stream (follow), started by start_following.
        self._followed: dict[str, Replay] = {}
        # The runner's; a bus made elsewhere (tools, tests) counts nothing.
        self.metrics: ServiceMetrics | None = None
        # The first projection halt of this process, and who hears of it (the runner: health).
        self.halted: Halt | None = None
        self.on_halt: OnHalt | None = None

    async def ensure_streams(self, specs: Iterable[StreamSpec], *, replicas: int = 1) -> None:
        """Create or update each stream to its declared configuration (safe to repeat).

        `replicas` > 1 on a JetStream cluster keeps each stream on that many nodes, so an
        acknowledged append survives the loss of a minority of them. Only the platform identity
        re-configures a stream: a service creates its own where none exists and otherwise takes
        it as the platform set it, since its NATS user may not change a stream's settings
        (nats_accounts.permissions_for).
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

    # Writing (bus_append) and parking (bus_parking): functions of the bus, as its methods.
    append = bus_append.append
    append_after_last = bus_append.append_after_last
    last_subject_seq = bus_append.last_subject_seq
    park = bus_parking.park
    reject_foreign = bus_parking.reject_foreign

    def follow(self, *, stream: str, filter_subject: str, handler: EventHandler, subjects: str | None = None) -> Replay:
        """Add a projection to this process's one replay of `stream` (reading `filter_subject`),
        handed only the events on `subjects` if given; returns that replay, for read-your-writes.

        Every projection of a stream is added before `start_following` starts its replay: one
        added later would miss the events already applied, so that is refused.
        """
        replay = self._followed.get(stream)
        if replay is None:
            replay = Replay(
                self, stream=stream, filter_subject=filter_subject, dispatcher=Dispatcher(stream, self._halted)
            )
            self._followed[stream] = replay
        if replay.filter_subject != filter_subject:
            raise ValueError(f"this process reads {stream} as {replay.filter_subject}, not {filter_subject}")
        if replay.started:
            raise RuntimeError(f"the replay of {stream} has started: add its projections before start_following()")
        replay.dispatcher.add(handler, subjects=subjects)
        return replay

    async def start_following(self) -> None:
        """Start the replay of every followed stream not started yet (they stop with the service)."""
        for replay in self._followed.values():
            if not replay.started:
                await replay.start()
                self._subscriptions.append(replay)

    async def _halted(self, halt: Halt) -> None:
        if self.halted is None:
            self.halted = halt
        if self.on_halt is not None:
            await self.on_halt(halt)

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
        """Feed every event on `filter_subject` to `handler`, in stream order, then keep following:
        a replay of its own (`follow` shares the process's replay of the stream).

        Backed by an ordered consumer, which the client recreates by itself after a gap, or when
        two heartbeats (`heartbeat_s` apart) did not come: it was lost. A replay that outlives
        only one call (a client's live stream) passes stop_with_service=False and stops it itself.
        """
        dispatcher = Dispatcher(stream, self._halted)
        dispatcher.add(handler)
        replay = Replay(
            self, stream=stream, filter_subject=filter_subject, dispatcher=dispatcher, heartbeat_s=heartbeat_s
        )
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
        on_parked: ParkedHandler | None = None,
    ) -> DurableConsumer:
        """Feed the durable consumer's events to `handler` in batches until the service stops.

        A stream its owner has not created yet is waited for in the background (no event can
        be waiting on it). A consumer that disappears is made again: from where `on_loss` says,
        or from the stream's start. With `linger_s`, a batch that is not full waits up to that
        long after its first event for more (a group commit: fewer, larger batches for a
        handler whose cost is mostly per batch, at that much more delay). `on_parked` is told
        the stream sequence of each event the consumer parks instead of handling.
        """
        consumer = DurableConsumer(
            self, spec=spec, handler=handler, batch=batch, linger_s=linger_s, on_loss=on_loss, on_parked=on_parked
        )
        await consumer.start()
        self._subscriptions.append(consumer)
        return consumer

    async def stop_consumers(self) -> None:
        """Stop every replay and durable consumer after their in-flight work, all at once (each
        durable consumer may be waiting out its fetch)."""
        for sub in self._subscriptions:
            if isinstance(sub, DurableConsumer):
                sub.stopping()
        for sub in reversed(self._subscriptions):
            await sub.stop()
        self._subscriptions.clear()
