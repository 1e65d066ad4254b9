"""The gateway for browsers: the same Gateway service over the Connect protocol, and the web app.

Why Connect: a unary call is one HTTP POST and a server stream one streamed response body, over
HTTP/1.1 or HTTP/2, so `fetch()` in any browser speaks it with no translating proxy (gRPC-Web
usually needs Envoy in front). Its Python server (`connectrpc`, from the Connect project that
also maintains the TypeScript client, `@connectrpc/connect-web`) is an ASGI application, which
hypercorn serves with TLS in the gateway's own event loop. It also answers gRPC-Web and gRPC.

Not a second API: every call runs through the very method handler that the gateway's gRPC
server runs, wrapped in the same interceptors (token and permission check, range checks, one
status per error, request statistics), and then the servicer's own admission (request size,
per-user and per-address rate limits, live-stream caps). Only the transport differs; the peer a
call comes from is the browser's own address.

The browser's session (its refresh token in an HttpOnly cookie) is web_sessions.py; the Connect
application web_api.py, and the call it makes of the gRPC handlers web_calls.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig

from parley_core.compliance_reports import REPORT_STYLE_SOURCE
from parley_core.pki import Pki
from parley_gateway.web_api import GatewayConnectApp

log = logging.getLogger(__name__)

# The page may load its own scripts, styles and calls only: no inline script, no eval, no
# framing, no plugins; the QR code of a two-factor enrolment is a data: image. One inline style
# is allowed, by its hash: the compliance report's stylesheet, for the report the console shows in
# a sandboxed srcdoc frame (which keeps this policy).
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; script-src 'self'; style-src 'self' {REPORT_STYLE_SOURCE}; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"strict-transport-security", b"max-age=31536000"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
)


# -- the web app's files, with the security headers --


Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class WebFiles:
    """The built web app (web/dist), GET and HEAD only; unknown paths get index.html (the app
    routes itself), paths outside the folder nothing."""

    root: Path | None
    cache: dict[Path, bytes] = field(default_factory=dict)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await _respond(send, 405, b"method not allowed\n", b"text/plain; charset=utf-8")
            return
        if self.root is None:
            await _respond(send, 404, b"this gateway serves the API only (no web app configured)\n", b"text/plain")
            return
        root = self.root.resolve()
        wanted = (root / scope["path"].lstrip("/")).resolve()
        if not wanted.is_relative_to(root):
            await _respond(send, 404, b"not found\n", b"text/plain; charset=utf-8")
            return
        if not wanted.is_file():
            wanted = root / "index.html"
        if not wanted.is_file():
            await _respond(send, 404, b"the web app is not built: run `make web`\n", b"text/plain; charset=utf-8")
            return
        body = self.cache.get(wanted)
        if body is None:
            body = wanted.read_bytes()
            self.cache[wanted] = body
        kind = mimetypes.guess_type(wanted.name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind in ("application/javascript", "application/json"):
            kind += "; charset=utf-8"
        await _respond(send, 200, b"" if scope["method"] == "HEAD" else body, kind.encode(), length=len(body))


async def _respond(send: Send, status: int, body: bytes, kind: bytes, *, length: int | None = None) -> None:
    headers = [
        (b"content-type", kind),
        (b"content-length", str(len(body) if length is None else length).encode()),
        (b"cache-control", b"no-cache"),
        *SECURITY_HEADERS,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BrowserApp:
    """Routes Connect calls to the Gateway service and everything else to the web app's files."""

    def __init__(self, api: GatewayConnectApp, files: WebFiles) -> None:
        self._api = api
        self._files = files
        self._prefix = f"{api.path}/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        if scope["path"].startswith(self._prefix):
            await self._api(cast(Any, scope), cast(Any, receive), cast(Any, send))
            return
        await self._files(scope, receive, send)


# -- the listener, in the gateway's own event loop --


def _listen(address: str, *, reuse_port: bool) -> socket.socket:
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, int(port)))
    sock.listen(512)
    sock.set_inheritable(True)
    return sock


class BrowserListener:
    """Serves BrowserApp with TLS (the gateway's own certificate) on one address."""

    def __init__(
        self, app: BrowserApp, *, pki: Pki, address: str, reuse_port: bool, handshake_timeout_s: float = 10.0
    ) -> None:
        self._app = app
        self._handshake_timeout_s = handshake_timeout_s
        self._pki = pki
        self._sock = _listen(address, reuse_port=reuse_port)
        host, port = self._sock.getsockname()[:2]
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.port = int(port)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        paths = self._pki.identity("gateway")
        config = HypercornConfig()
        # Hypercorn closes the socket it is given when it shuts down: it gets a duplicate, and
        # this listener closes its own.
        config.bind = [f"fd://{os.dup(self._sock.fileno())}"]
        config.certfile = str(paths.cert)
        config.keyfile = str(paths.key)
        config.accesslog = None
        config.errorlog = log
        config.alpn_protocols = ["h2", "http/1.1"]
        config.graceful_timeout = 2.0
        config.keep_alive_timeout = 75.0
        config.ssl_handshake_timeout = self._handshake_timeout_s  # PARLEY_CLIENT_HANDSHAKE_TIMEOUT_SECONDS
        config.include_server_header = False
        self._task = asyncio.create_task(
            hypercorn_serve(cast(Any, self._app), config, shutdown_trigger=self._stop.wait, mode="asgi"),
            name="browser-listener",
        )

    async def stop(self) -> None:
        self._stop.set()
        loop = asyncio.get_running_loop()
        previous = loop.get_exception_handler()
        loop.set_exception_handler(_connections_cancelled_at_stop(previous))
        try:
            if self._task is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(self._task, 5.0)
            await asyncio.sleep(0)  # the cancelled connections' callbacks run before the handler goes back
        finally:
            loop.set_exception_handler(previous)
        self._sock.close()


ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


def _connections_cancelled_at_stop(previous: ExceptionHandler | None) -> ExceptionHandler:
    """At a stop hypercorn cancels the connections still open after its graceful timeout (live
    streams are); Python 3.11's asyncio.start_server reports each such cancelled connection task
    as an error from a callback (3.12 no longer does). Expected at a stop: a debug line; anything
    else goes to the handler as before."""

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), asyncio.CancelledError):
            log.debug("a connection still open at the stop was ended: %s", context.get("message", ""))
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    return handler
