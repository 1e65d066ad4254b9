"""Live streams: the events of the caller's channels as they happen, and where each one stopped."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from parley.gateway.v1 import gateway_pb2
from parley.messaging.v1 import messaging_pb2

from parley_client.errors import ParleyError, error_of

# A live stream that ends with one of these is reopened from where it stopped.
RESUMABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
)


@dataclass(frozen=True)
class LiveEvent:
    """One event of a live stream.

    `kind` is "message" (new), "updated" (edited or redacted: `message` holds the change),
    "reaction", "read_marker" or "membership" (joins, leaves, kicks, bans, roles, name and
    topic); `event` is the whole protobuf event.
    """

    kind: str
    event: gateway_pb2.ClientEvent

    @property
    def message(self) -> messaging_pb2.ChatMessage:
        return self.event.updated if self.kind == "updated" else self.event.message

    @property
    def channel_id(self) -> str:
        return str(getattr(self.event, self.kind).channel_id)

    @property
    def position(self) -> int:
        return int(getattr(self.event, self.kind).position)


class LiveStream:
    """Live events of the caller's channels. `ready()` returns once nothing can be missed.

    `positions` holds, per channel, the position of the last event read: pass it to
    `ParleyClient.subscribe(resume=...)` to continue after a disconnect with no gap or repeat.
    A `membership` event of a channel the stream does not cover tells the caller that they
    arrived there (invited, or joined elsewhere): subscribe again to cover it.
    """

    def __init__(
        self,
        call: Any,
        positions: Mapping[str, int] | None = None,
        reveal: Callable[[messaging_pb2.ChatMessage], Awaitable[None]] | None = None,
    ) -> None:
        self._call = call
        self.channel_ids: list[str] = []
        self.positions: dict[str, int] = dict(positions or {})
        self._reveal = reveal

    async def ready(self) -> list[str]:
        first = await self._next()
        if first.WhichOneof("event") != "ready":
            raise ParleyError(grpc.StatusCode.INTERNAL, "live stream did not start with `ready`")
        self._started(first.ready)
        return self.channel_ids

    def _started(self, ready: gateway_pb2.Ready) -> None:
        self.channel_ids = list(ready.channel_ids)
        for start in ready.positions:
            self.positions.setdefault(start.channel_id, start.after_position)

    async def _next(self) -> gateway_pb2.ClientEvent:
        try:
            event = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise error_of(exc) from None
        if event is grpc.aio.EOF:
            raise StopAsyncIteration
        assert isinstance(event, gateway_pb2.ClientEvent)
        return event

    def __aiter__(self) -> AsyncIterator[messaging_pb2.ChatMessage]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[messaging_pb2.ChatMessage]:
        async for event in self.events():
            if event.kind == "message":
                yield event.message

    async def events(self) -> AsyncIterator[LiveEvent]:
        """New messages and changes to earlier ones (edits, redactions), in channel order."""
        while True:
            try:
                event = await self._next()
            except StopAsyncIteration:
                return  # the server ended the stream (it is draining): resume elsewhere
            kind = event.WhichOneof("event")
            if kind == "ready":
                self._started(event.ready)
            if kind is None or kind == "ready":
                continue
            live = LiveEvent(kind, event)
            if live.channel_id in self.channel_ids:  # not an arrival elsewhere: resuming there is refused
                self.positions[live.channel_id] = max(self.positions.get(live.channel_id, 0), live.position)
            if self._reveal is not None and kind in ("message", "updated"):
                await self._reveal(live.message)
            yield live

    def cancel(self) -> None:
        self._call.cancel()
