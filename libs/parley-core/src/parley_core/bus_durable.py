"""Durable consumers: a service's own named consumer of a stream, fed to a batch handler.

Each event is handled at least once and acknowledged after its handler succeeded. A batch that
fails is retried event by event; an event that keeps failing (or that its handler refuses) is
parked; a handler waiting for a dependency (RetryLater) holds its batch without spending any
redelivery budget. A consumer that disappears is made again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api

from parley_core import telemetry
from parley_core.bus_events import (
    CONSUMER_NOT_FOUND,
    MAX_CONSUMERS_REACHED,
    STREAM_NOT_FOUND,
    SUBSCRIBE_RETRY_MAX_S,
    BatchHandler,
    BusConnection,
    ConsumerLoss,
    ParkedHandler,
    ReceivedEvent,
    Refused,
    RetryLater,
    foreign_type,
    received,
)
from parley_core.bus_pull import Pulls
from parley_core.topology import ConsumerSpec

log = logging.getLogger(__name__)

# How long one fetch of a durable consumer waits for events: also how soon it notices a stop.
FETCH_WAIT_S = 0.5
# With less than this left of a linger, its fetch waits for nothing: it takes the events there.
MIN_FETCH_WAIT_S = 0.002
# Within a linger, events gather up to this long before each fetch: a linger no longer than this
# (storage's archive) fetches once, at its end, and a longer one still hands a batch over soon
# after it is full. Every fetch is a request, an answer and a wake-up of the consumer and of
# nats-server: three fetches in a 25 ms linger cost 30 % more consumer CPU per event than one.
LINGER_GATHER_MAX_S = 0.05
# Backoff of a batch held while its handler waits for a dependency (see RetryLater); the
# longest pause stays well under any ack_wait, and every pause renews the ack deadline.
RETRY_LATER_FIRST_S = 0.2
RETRY_LATER_MAX_S = 5.0
# A replay's ordered consumer lost with its server (a restarted nats-server keeps no ordered


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
    bus: BusConnection
    spec: ConsumerSpec
    handler: BatchHandler
    batch: int
    linger_s: float = 0.0
    on_loss: ConsumerLoss | None = None
    on_parked: ParkedHandler | None = None
    _task: asyncio.Task[None] | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _pulls: Pulls | None = None

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
            try:
                await self.bus.js.consumer_info(self.spec.stream, self.spec.durable)
            except nats.js.errors.NotFoundError as exc:
                if exc.err_code == STREAM_NOT_FOUND:
                    return False
                await self.bus.js.add_consumer(self.spec.stream, self._config())
        except nats.js.errors.NotFoundError as exc:
            if exc.err_code != STREAM_NOT_FOUND:
                raise
            return False
        if self._pulls is None:
            self._pulls = Pulls(self.bus, stream=self.spec.stream, durable=self.spec.durable)
            await self._pulls.start()
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
        if self._pulls is None:
            return True  # its stream does not exist yet: nothing can be waiting
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + timeout, 0.02
        while True:
            info = await self.bus.js.consumer_info(self.spec.stream, self.spec.durable)
            if not info.num_pending and not info.num_ack_pending:
                return True
            if loop.time() > deadline:
                return False
            await asyncio.sleep(delay)  # a consumer's state is only polled; bounded by the deadline
            delay = min(delay * 2, 0.5)

    async def _run(self) -> None:
        assert self._pulls is not None
        while not self._stopping.is_set():
            try:
                msgs = await self._pulls.pull(self.batch, wait_s=FETCH_WAIT_S)
            except nats.errors.Error as exc:
                if self._stopping.is_set():
                    return
                if await self._is_lost():
                    await self._recreate()
                    continue
                log.warning("fetch failed, retrying", extra={"consumer": self.spec.durable, "error": str(exc)})
                await asyncio.sleep(0.5)
                continue
            if not msgs:
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
        assert self._pulls is not None
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.linger_s
        gather_s = min(self.linger_s, LINGER_GATHER_MAX_S)
        more: list[Msg] = []
        while len(more) < wanted and not self._stopping.is_set():
            # Events gather before each fetch: a fetch is a request and a status reply over NATS,
            # and it answers as soon as one event is there, so fetching at once cost both per
            # event of a steady flow (the flow's batch is the same either way).
            await asyncio.sleep(max(0.0, min(gather_s, give_up - loop.time())))
            left = give_up - loop.time()
            # Within the linger a fetch may wait for the next event; at its end it takes those there.
            wait_s = min(left, FETCH_WAIT_S) if left >= MIN_FETCH_WAIT_S else None
            try:
                more += await self._pulls.pull(wanted - len(more), wait_s=wait_s)
            except nats.errors.Error:
                break  # the batch goes as it is; the next fetch meets the trouble
            if wait_s is None:
                break
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
                event = received(msg)
            except Exception as exc:
                await self.bus.park(msg, reason=f"undecodable envelope: {exc}")
                await self._parked(msg)
                continue
            if (foreign := foreign_type(event)) is not None:
                await self.bus.reject_foreign(msg, reason=foreign)
                await msg.term()
                await self._parked(msg)
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
        for msg, _ in decoded:
            await msg.ack()
        self._count([event for _, event in decoded])

    def _count(self, events: list[ReceivedEvent]) -> None:
        """The batch's events in the metrics: one increment per batch, not per event."""
        if (metrics := self.bus.metrics) is not None:
            metrics.events_consumed.labels(self.spec.stream).inc(len(events))
            if redelivered := sum(event.num_delivered > 1 for event in events):
                metrics.redeliveries.labels(self.spec.durable).inc(redelivered)

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
            await self._parked(msg)
            return
        except Exception as exc:
            if event.num_delivered >= self.spec.max_deliver:
                await self.bus.park(msg, reason=repr(exc))
                await self._parked(msg)
            else:
                # Exponential backoff between redeliveries, bounded by max_deliver.
                await msg.nak(delay=min(0.2 * 2**event.num_delivered, 30.0))
            return
        await msg.ack()
        self._count([event])

    async def _parked(self, msg: Msg) -> None:
        if self.on_parked is not None:
            await self.on_parked(msg.metadata.sequence.stream)

    def stopping(self) -> None:
        """Take no new batch from now on (stop() then waits for the one in flight)."""
        self._stopping.set()

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._pulls is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._pulls.stop()
            self._pulls = None
