"""A client at another address: a TCP relay whose outgoing connections leave from 127.0.0.N.

A gRPC client cannot choose the address its connections come from; a test that needs clients
at several addresses (per-address limits, lockouts, security events) connects through one relay
per address instead. The relay copies bytes only (TLS passes through it untouched), so what the
server sees is exactly a client at `source_host`. Linux answers the whole of 127.0.0.0/8 on the
loopback interface, so any 127.0.0.N works without configuration.
"""

from __future__ import annotations

import asyncio
from functools import partial

from parley_core.relay import Relays, open_side

__all__ = ["SourceRelay"]


class SourceRelay:
    """Listens on 127.0.0.1 (`address`) and forwards each connection to `target` from `source_host`."""

    def __init__(self, target: str, source_host: str) -> None:
        self.target = target
        self.source_host = source_host
        self._server: asyncio.Server | None = None
        host, _, port = target.rpartition(":")
        self._relays = Relays(partial(open_side, host=host, port=int(port), local_addr=(source_host, 0)))

    @property
    def address(self) -> str:
        assert self._server is not None, "start() the relay first"
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> SourceRelay:
        self._server = await asyncio.get_running_loop().create_server(self._relays.accept, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._relays.close_all()
