"""A client at another address: a TCP relay whose outgoing connections leave from 127.0.0.N.

A gRPC client cannot choose the address its connections come from; a test that needs clients
at several addresses (per-address limits, lockouts, security events) connects through one relay
per address instead. The relay copies bytes only (TLS passes through it untouched), so what the
server sees is exactly a client at `source_host`. Linux answers the whole of 127.0.0.0/8 on the
loopback interface, so any 127.0.0.N works without configuration.
"""

from __future__ import annotations

import asyncio

from parley_core.net import splice

__all__ = ["SourceRelay"]


class SourceRelay:
    """Listens on 127.0.0.1 (`address`) and forwards each connection to `target` from `source_host`."""

    def __init__(self, target: str, source_host: str) -> None:
        self.target = target
        self.source_host = source_host
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        assert self._server is not None, "start() the relay first"
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> SourceRelay:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        host, _, port = self.target.rpartition(":")
        try:
            server = await asyncio.open_connection(host, int(port), local_addr=(self.source_host, 0))
            await splice((client_reader, client_writer), server)
        finally:
            client_writer.close()
            self._connections.discard(task)
