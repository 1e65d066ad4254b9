"""Serves the TUF repository read-only over HTTP, for `tuf.ngclient.Updater`.

TUF makes the transport untrusted by design (every byte is verified against signed metadata,
whose timestamp expires: neither a changed byte nor a replayed old repository is accepted), so
plain HTTP is enough. It listens on the host's address (PARLEY_HOST_ADDRESS, else loopback), so
node agents on other hosts fetch releases from any registry they follow.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

# A request not fully sent within this many seconds of its connection is dropped (however its
# lines trickle in), an answer whose reader stalls this long too, and at most this many
# connections are served at once (one thread each); any more is closed on arrival. Node agents make
# a few short fetches each: half-sent requests then tie up neither threads nor the port.
REQUEST_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 64


class _RequestDeadline:
    """The handler's reader until its request is read: each line may wait only for what is left of
    the request's time, so a client sending a header line every few seconds still runs out of it."""

    def __init__(self, reader: Any, connection: socket.socket, seconds: float) -> None:
        self._reader = reader
        self._connection = connection
        self._deadline = time.monotonic() + seconds

    def readline(self, limit: int = -1) -> bytes:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request was not sent in time")
        self._connection.settimeout(left)
        return bytes(self._reader.readline(limit))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)


class _QuietHandler(SimpleHTTPRequestHandler):
    server: _BoundedServer

    def setup(self) -> None:
        super().setup()
        self.rfile = _RequestDeadline(self.rfile, self.connection, self.server.request_timeout_s)  # type: ignore[assignment]

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        # The request is in: the answer's writes each get the whole time (a reader stalled that long ends it).
        self.connection.settimeout(self.server.request_timeout_s)
        return parsed

    def log_message(self, format: str, *args: Any) -> None:
        """Access logs would go to stderr on every poll; the registry logs what matters."""


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, up to `max_connections` at once; one beyond is closed unserved."""

    request_queue_size = 128  # connections the kernel holds for accept (5 by default): a burst waits less

    def __init__(
        self, address: tuple[str, int], handler: Any, *, request_timeout_s: float, max_connections: int
    ) -> None:
        self.request_timeout_s = request_timeout_s
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # no thread started to release it
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client gone before its answer is no fault here (socketserver would print a traceback each)."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Ipv6Server(_BoundedServer):
    address_family = socket.AF_INET6


class RepositoryHttpServer:
    """Starts on a free port (of 127.0.0.1 unless told a host) in a thread; `with` stops it."""

    def __init__(
        self,
        folder: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        server = _Ipv6Server if ":" in host else _BoundedServer
        self._server = server(
            (host, port),
            partial(_QuietHandler, directory=str(folder)),
            request_timeout_s=request_timeout_s,
            max_connections=max_connections,
        )
        self._thread = threading.Thread(target=self._server.serve_forever, name="tuf-http", daemon=True)

    @property
    def base_url(self) -> str:
        """What the TufRepository RPC hands the agents: the address it listens on."""
        host, port = self._server.server_address[:2]
        return f"http://[{host!s}]:{port}" if ":" in str(host) else f"http://{host!s}:{port}"

    @property
    def metadata_url(self) -> str:
        return f"{self.base_url}/metadata/"

    @property
    def targets_url(self) -> str:
        return f"{self.base_url}/targets/"

    def start(self) -> RepositoryHttpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> RepositoryHttpServer:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()
