"""One JetStream subscription per gateway process feeds every client's live stream.

A consumer per client stream made nats-server's consumer limit a budget all users shared: about
1,000 streams and every other user's Subscribe failed. Instead the gateway follows every
channel's events with one ordered consumer, started with the service, and hands each event to
the streams of that channel it serves, in process (channel id -> set of streams). One consumer
per process, not per channel: the count stays fixed whatever users do, and a stream joins the
feed with a dict insertion instead of a round trip to the server. The price is that each
gateway reads the events of channels none of its clients follow, which it drops unopened, except
those that bring a user into a channel (invited, joined, a conversation started with them): the
streams of that user are told, so a client takes up a channel it did not follow.
"""

from __future__ import annotations

import asyncio
import logging

import nats.errors

from parley_core.bus import EventBus, ReceivedEvent, Replay
from parley_core.errors import Unavailable
from parley_core.topology import CHANNELS_FILTER
from parley_gateway.live import ARRIVAL_TYPES, LiveSubscriber, channel_event_of

log = logging.getLogger(__name__)

STREAM = "MSG"
RETRY_FIRST_S = 0.2
RETRY_MAX_S = 5.0


class ChannelFeed:
    """The process's one consumer of channel events and the live streams it feeds.

    `position` is the stream position of the newest event handed out: a stream that joins now
    receives every later event of its channels, so it reads up to `position` from the log itself.
    """

    def __init__(self, bus: EventBus) -> None:
        self._bus = bus
        self._streams: dict[str, set[LiveSubscriber]] = {}
        self._by_user: dict[str, set[LiveSubscriber]] = {}  # for events that bring a user into a channel
        self._all: set[LiveSubscriber] = set()
        self.position = 0
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._replay: Replay | None = None

    def start(self) -> None:
        """Follow the channels from now on, in the background: the gateway serves its other calls
        while the MSG stream does not exist yet (messaging creates it)."""
        self._task = asyncio.create_task(self._follow(), name="channel-feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._replay is not None:
            await self._replay.stop()
            self._replay = None

    async def _follow(self) -> None:
        delay = RETRY_FIRST_S
        while True:
            try:
                await self._bus.wait_for_stream(STREAM, timeout=RETRY_MAX_S)
                # From the stream's end now: older events are history, read from the log on resume.
                self.position = (await self._bus.js.stream_info(STREAM)).state.last_seq
                self._replay = await self._bus.replay(
                    stream=STREAM,
                    filter_subject=CHANNELS_FILTER,
                    handler=self._dispatch,
                    start_seq=self.position + 1,
                    stop_with_service=False,
                )
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("channel feed not started yet; retrying", extra={"error": str(exc) or type(exc).__name__})
                await asyncio.sleep(delay)  # NATS or the MSG stream not there yet: back off and retry
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            self._ready.set()
            log.info("channel feed started", extra={"position": self.position})
            return

    async def wait_ready(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            raise Unavailable("live streams are not available yet; retry shortly") from None

    async def caught_up(self, timeout: float) -> None:
        """Until the feed has handed out every channel event the log held when asked, so that a
        stream joining after this starts after its caller's own acknowledged writes (a join just
        made is history, not news). Bounded: a feed that lags longer only delivers them live."""
        newest = await self._bus.last_subject_seq(STREAM, CHANNELS_FILTER)
        if self._replay is None or newest <= self.position:
            return
        try:
            await self._replay.wait_for_seq(newest, timeout)
        except TimeoutError:
            log.warning("channel feed behind the log; a new live stream starts where the feed is")

    async def _dispatch(self, received: ReceivedEvent) -> None:
        envelope = received.envelope
        streams = self._streams.get(envelope.aggregate_id)
        arrival = envelope.event_type in ARRIVAL_TYPES and bool(self._by_user)
        if streams or arrival:
            event = channel_event_of(envelope, received.stream_seq, opened=lambda: received.payload)
            for stream in streams or ():
                stream.deliver(event)
            for user_id in event.arrivals:
                for stream in self._by_user.get(user_id, ()):
                    stream.welcome(event)
        self.position = received.stream_seq

    def add(self, stream: LiveSubscriber) -> None:
        """From now on `stream` receives each event of its channels after `position`.

        Synchronous on purpose: no event can be handed out between the caller reading
        `position` and the stream joining.
        """
        for channel_id in stream.channel_ids:
            self._streams.setdefault(channel_id, set()).add(stream)
        self._by_user.setdefault(stream.user_id, set()).add(stream)
        self._all.add(stream)

    def remove(self, stream: LiveSubscriber) -> None:
        for channel_id in stream.channel_ids:
            streams = self._streams.get(channel_id)
            if streams is not None:
                streams.discard(stream)
                if not streams:
                    del self._streams[channel_id]
        mine = self._by_user.get(stream.user_id)
        if mine is not None:
            mine.discard(stream)
            if not mine:
                del self._by_user[stream.user_id]
        self._all.discard(stream)

    def streams(self) -> list[LiveSubscriber]:
        """Every stream this process serves."""
        return list(self._all)

    @property
    def stream_count(self) -> int:
        return len(self._all)
