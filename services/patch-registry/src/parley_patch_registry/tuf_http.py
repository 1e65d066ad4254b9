"""Serves the TUF repository read-only over HTTP, for `tuf.ngclient.Updater`.

TUF makes the transport untrusted by design (every byte is verified against signed metadata,
whose timestamp expires: neither a changed byte nor a replayed old repository is accepted), so
plain HTTP is enough. It listens on the host's address (PARLEY_HOST_ADDRESS, else loopback), so
node agents on other hosts fetch releases from any registry they follow.
"""

from __future__ import annotations

import socket
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Access logs would go to stderr on every poll; the registry logs what matters."""


class _Ipv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class RepositoryHttpServer:
    """Starts on a free port (of 127.0.0.1 unless told a host) in a thread; `with` stops it."""

    def __init__(self, folder: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        server = _Ipv6Server if ":" in host else ThreadingHTTPServer
        self._server = server((host, port), partial(_QuietHandler, directory=str(folder)))
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
