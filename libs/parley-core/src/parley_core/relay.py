"""A TCP relay: two sockets joined end to end, what one receives goes out on the other, unread
and unchanged (TLS passes through untouched). The node agent's front doors relay every call
between services this way, and tests relay clients from other addresses (parley_testing.relay).

Protocols, not streams: every call between services crosses a front door twice (request and
answer), and a stream reader costs a buffer copy and a task wake-up per chunk on top of the
socket calls, about a quarter of `parley up`'s busy CPU in `make bench`'s profile. Here a chunk
is written to the other socket in the callback that received it.

Flow control is asyncio's: when one side's outgoing buffer passes its high-water mark, the
other side stops reading until it drains, so a slow reader slows its sender instead of growing
the buffer. An end of file travels on as a half-close; the pair closes once both directions
have ended, or at once when either socket is lost.

A listener may cap the connections one source holds (`per_source`, counted as
parley_core.connections counts a client port's): past it a new client is closed at once, before
any backend connection is made for it, so that no one address can take every descriptor of the
process, which relays for everyone.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, cast

from parley_core.connections import peer_budget

log = logging.getLogger(__name__)


class RelaySide(asyncio.Protocol):
    """One socket of a relayed pair; `peer` is the other (None until the pair is joined)."""

    def __init__(self, peer: RelaySide | None = None, on_lost: Callable[[RelaySide], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer = peer
        self._ended = False  # this socket's far end sent its end of file
        self._on_lost = on_lost

    def join(self, peer: RelaySide) -> None:
        """Pair with `peer` and start reading (a side made before its peer waits paused)."""
        self.peer = peer
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _peer_transport(self) -> asyncio.Transport | None:
        peer = self.peer
        if peer is None or peer.transport is None or peer.transport.is_closing():
            return None
        return peer.transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.peer is None:
            self.transport.pause_reading()  # nowhere to send it yet

    def data_received(self, data: bytes) -> None:
        if (out := self._peer_transport()) is not None:
            out.write(data)

    def eof_received(self) -> bool:
        self._ended = True
        out = self._peer_transport()
        if out is None:
            return False
        assert self.peer is not None
        if self.peer._ended:  # both directions have ended
            out.close()
            return False
        out.write_eof()
        return True  # half-closed: the other direction goes on

    def pause_writing(self) -> None:
        if (source := self._peer_transport()) is not None:
            source.pause_reading()

    def resume_writing(self) -> None:
        if (source := self._peer_transport()) is not None:
            source.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.close()
        if self._on_lost is not None:
            self._on_lost(self)


OpenBackend = Callable[["RelaySide"], Awaitable["RelaySide | None"]]


async def open_side(peer: RelaySide, host: str, port: int, **options: Any) -> RelaySide:
    """A connection to host:port relaying to and from `peer` (`options`: loop.create_connection's)."""
    loop = asyncio.get_running_loop()
    _, side = await loop.create_connection(lambda: RelaySide(peer=peer), host, port, **options)
    return side


class Relays:
    """The connections one listener relays: `accept` is its protocol factory. Each accepted client
    waits, unread, until `open_backend` has connected its other side (None: there is none, and the
    client's connection is closed). `per_source`: at most that many open clients per source."""

    def __init__(self, open_backend: OpenBackend, *, per_source: int | None = None) -> None:
        self._open_backend = open_backend
        self._clients: set[RelaySide] = set()
        self._joining: set[asyncio.Task[None]] = set()
        self._per_source = per_source
        self._held: Counter[str] = Counter()  # open clients per source
        self._over: set[str] = set()  # sources refused since they were last under the cap (logged once)

    def accept(self) -> RelaySide:
        return _Accepted(self)

    def close_all(self) -> None:
        """Ends every relayed connection, and those still waiting for their other side."""
        for task in list(self._joining):
            task.cancel()
        for client in list(self._clients):
            client.close()

    def _admitted(self, client: _Accepted) -> bool:
        """Counts the client against its source's cap; False (and closed) past it."""
        if self._per_source is None:
            return True
        assert client.transport is not None
        peer = client.transport.get_extra_info("peername")
        client.source = peer_budget(peer[0]) if peer else ""
        if self._held[client.source] >= self._per_source:
            if client.source not in self._over:
                self._over.add(client.source)
                log.warning(
                    "refused connections over the per-source cap",
                    extra={"security_event": "connections_over_cap", "source": client.source, "cap": self._per_source},
                )
            client.source = None
            client.transport.abort()
            return False
        self._held[client.source] += 1
        return True

    def _lost(self, client: RelaySide) -> None:
        self._clients.discard(client)
        source = getattr(client, "source", None)
        if source is not None:
            self._held[source] -= 1
            if self._held[source] <= 0:
                del self._held[source]
            self._over.discard(source)

    def _accepted(self, client: _Accepted) -> None:
        if not self._admitted(client):
            return
        self._clients.add(client)
        task = asyncio.get_running_loop().create_task(self._join(client))
        self._joining.add(task)
        task.add_done_callback(self._joining.discard)

    async def _join(self, client: RelaySide) -> None:
        try:
            backend = await self._open_backend(client)
        except BaseException:
            client.close()
            raise
        if backend is None:
            client.close()
        elif client.transport is None or client.transport.is_closing():
            backend.close()  # the client left while its other side was being connected
        else:
            client.join(backend)


class _Accepted(RelaySide):
    """An accepted client's side: once connected, its relays open the other side."""

    def __init__(self, relays: Relays) -> None:
        super().__init__(on_lost=relays._lost)
        self._relays = relays
        self.source: str | None = None  # the source it counts against (None: not counted)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._relays._accepted(self)
