"""Replays: a process's projections fed from a stream, in stream order, from an ordered consumer.

A replay reads its stream from the start (or a given point) and keeps following it, handing
each event to its Dispatcher (projection_dispatch), which applies it to every projection added
to it, in order, or halts. Read-your-writes: `apply_own` applies this process's acknowledged
append at once, and `wait_for_seq` waits until the replay has passed a sequence. An append is
usually delivered before its acknowledgement comes: the replay, told of it while it is on its
way (OwnWrites), applies the writer's open copy then, with no decoding.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from parley_core import deadline, telemetry
from parley_core.bus_events import (
    MAX_CONSUMERS_REACHED,
    SUBSCRIBE_RETRY_MAX_S,
    Appended,
    BusConnection,
    ReceivedEvent,
    foreign_type,
    received,
)
from parley_core.projection_dispatch import Dispatcher, ProjectionHalted

log = logging.getLogger(__name__)

# A replay waits this long for a free consumer slot (a flood took them; the consumer guard frees them).
NO_CONSUMER_SLOT_WAIT_S = 60.0
# A replay's ordered consumer lost with its server (a restarted nats-server keeps no ordered
# consumer) is noticed after two missed heartbeats and made again: after 2-4 s at this interval.
REPLAY_HEARTBEAT_S = 1.0


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


@dataclass
class Replay:
    bus: BusConnection
    stream: str
    filter_subject: str
    dispatcher: Dispatcher
    heartbeat_s: float = REPLAY_HEARTBEAT_S
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)
    last_seq: int = 0
    started: bool = False
    _sub: JetStreamContext.PushSubscription | None = None
    _progress: asyncio.Condition = field(default_factory=asyncio.Condition)
    # Stream sequences this process applied at once (apply_own), ahead of the replay's position.
    _applied_ahead: set[int] = field(default_factory=set)
    _delivering: int = 0
    # This process's appends on their way (OwnWrites): the bytes published -> the event sealed.
    _in_flight: dict[bytes, ReceivedEvent] = field(default_factory=dict)

    async def start(self, *, start_seq: int | None = None, only_new: bool = False) -> None:
        self.started = True
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
        if self.dispatcher.halted is not None:
            return  # halted: nothing after the failed event is applied, nor counted as passed
        meta = msg.metadata
        if self._own_write_passed(meta.sequence.stream):
            await self._consumed(meta.sequence.stream, meta.num_pending)
            return
        if self._in_flight and (sealed := self._in_flight.get(msg.data)) is not None:
            await self._apply_delivered_own(sealed.stored_at(meta.stream, meta.sequence.stream), meta.num_pending)
            return
        try:
            event = received(msg)
        except Exception:
            # Bytes no owner's code writes (a stolen credential's junk): parked and passed, so
            # junk at a stream's end cannot keep every reader from ever catching up at start.
            log.exception("undecodable event skipped by replay", extra={"subject": msg.subject})
            try:
                await self.bus.reject_foreign(msg, reason="undecodable: not a Parley event envelope")
            except Exception:  # not parked (NATS trouble); passed all the same
                log.exception("an undecodable event was not parked", extra={"subject": msg.subject})
            await self._passed(meta.sequence.stream, meta.num_pending)
            return
        if (foreign := foreign_type(event)) is not None:
            try:
                await self.bus.reject_foreign(msg, reason=foreign)
            except Exception:  # not parked (NATS trouble); never applied all the same
                log.exception("a foreign event was not parked", extra={"subject": msg.subject, "reason": foreign})
        else:
            self._delivering = event.stream_seq
            with telemetry.continued_from(event.headers, f"apply {event.envelope.event_type}", subject=msg.subject):
                try:
                    await self.dispatcher.apply(event)
                except ProjectionHalted:
                    await self._wake_waiters()
                    return
        await self._consumed(event.stream_seq, meta.num_pending)

    async def _apply_delivered_own(self, event: ReceivedEvent, num_pending: int) -> None:
        """This process's append, delivered before its acknowledgement came (the usual order):
        the stream holds exactly the bytes sealed, so the writer's open copy is applied, in the
        replay's order, with no decoding and no owner check (what apply_own does after an ack)."""
        self._delivering = event.stream_seq
        try:
            await self.dispatcher.apply(event)
        except ProjectionHalted:
            await self._wake_waiters()
            return
        await self._consumed(event.stream_seq, num_pending)

    def expect(self, data: bytes, sealed: ReceivedEvent) -> None:
        """OwnWrites: an append of `data` is on its way."""
        self._in_flight[data] = sealed

    def forget(self, data: bytes) -> None:
        """OwnWrites: the append of `data` was answered (or failed)."""
        self._in_flight.pop(data, None)

    def _own_write_passed(self, stream_seq: int) -> bool:
        """Whether the event at `stream_seq` is this process's own write, applied when it was
        acknowledged (apply_own): the replay passes it unopened."""
        if not self._applied_ahead:
            return False
        if min(self._applied_ahead) < stream_seq:
            # Applied at once, then deleted from the stream (an erasure) before the replay reached it.
            self._applied_ahead = {seq for seq in self._applied_ahead if seq >= stream_seq}
        if stream_seq not in self._applied_ahead:
            return False
        self._applied_ahead.discard(stream_seq)
        return True

    async def _consumed(self, stream_seq: int, num_pending: int) -> None:
        if self.bus.metrics is not None:
            self.bus.metrics.consumed_from(self.stream).inc()
        await self._passed(stream_seq, num_pending)

    async def _passed(self, stream_seq: int, num_pending: int) -> None:
        """The replay is past `stream_seq`: read-your-writes waiters and the caught-up flag see it."""
        async with self._progress:
            self.last_seq = stream_seq
            self._progress.notify_all()
        if num_pending == 0:
            self.caught_up.set()

    async def _wake_waiters(self) -> None:
        """A halt: read-your-writes waiters stop waiting for a sequence that will not come."""
        async with self._progress:
            self._progress.notify_all()

    def _check_halted(self) -> None:
        if (halt := self.dispatcher.halted) is not None:
            raise ProjectionHalted(halt)

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
        self._check_halted()
        seq = written.stream_seq
        if seq <= self.last_seq or seq == self._delivering or seq in self._applied_ahead:
            return  # the replay got there first
        self._applied_ahead.add(seq)
        try:
            await self.dispatcher.apply(written)
        except ProjectionHalted:
            await self._wake_waiters()
            raise

    async def wait_for_seq(self, stream_seq: int, timeout: float = 10.0) -> None:
        """Read-your-writes: wait until this replay has applied the event at `stream_seq`
        (within the call's deadline too: a timeout is then answered, not cut off). A halted
        replay raises ProjectionHalted at once (UNAVAILABLE, saying why and what to do)."""
        timeout = max(0.05, min(timeout, deadline.give_up_at(timeout) - asyncio.get_running_loop().time()))
        async with self._progress:
            await asyncio.wait_for(
                self._progress.wait_for(lambda: self.last_seq >= stream_seq or self.dispatcher.halted is not None),
                timeout,
            )
        if self.last_seq < stream_seq:
            self._check_halted()

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
            self._check_halted()
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
