"""Serves the TUF repository read-only over HTTP on loopback, for `tuf.ngclient.Updater`.

TUF makes the transport untrusted by design (every byte is verified against signed metadata),
so plain HTTP on loopback is enough; node agents on other hosts reach it through the registry
host's own TLS terminator or an SSH tunnel.
"""

from __future__ import annotations

import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Access logs would go to stderr on every poll; the registry logs what matters."""


class RepositoryHttpServer:
    """Starts on a free port (127.0.0.1:0) in a thread; `with` stops it."""

    def __init__(self, folder: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = ThreadingHTTPServer((host, port), partial(_QuietHandler, directory=str(folder)))
        self._thread = threading.Thread(target=self._server.serve_forever, name="tuf-http", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

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
