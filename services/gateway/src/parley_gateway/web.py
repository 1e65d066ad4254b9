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

The browser keeps its access token in memory only. The refresh token never reaches script:
Login and Refresh move it from the response into an `HttpOnly; Secure; SameSite=Strict` cookie
on this origin, and Refresh without a token in its body reads it from there. Cross-site
requests cannot use it: the cookie is SameSite=Strict, a Connect call's content type makes the
browser ask (CORS preflight) first, which this server never grants, and a call that uses the
cookie must carry an `Origin` header naming this very origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, cast

import grpc
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.method import IdempotencyLevel, MethodInfo, StreamType
from connectrpc.request import RequestContext
from connectrpc.server import ConnectASGIApplication, Endpoint
from google.protobuf import json_format
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig
from parley.auth.v1 import auth_pb2
from parley.gateway.v1 import gateway_pb2

from parley_core.compliance_reports import REPORT_STYLE_SOURCE
from parley_core.pki import Pki

log = logging.getLogger(__name__)

SERVICE: ServiceDescriptor = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"]
# The refresh token's cookie: `__Host-` makes the browser refuse it unless Secure, Path=/ and
# without Domain, so no other host (a sibling subdomain) can set or read it.
REFRESH_COOKIE = "__Host-parley-refresh"
REFRESH_COOKIE_MAX_AGE_S = 30 * 24 * 3600
# Beside it, a cookie script may read that holds no secret: only that this browser has a session
# to refresh, so that a first visit does not ask for one (a 401 in the console) when it has none.
SESSION_HINT_COOKIE = "__Host-parley-session"
# Calls whose response carries a refresh token (moved into the cookie) and which may read it.
ISSUES_REFRESH = frozenset({"Login", "Refresh"})
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


# -- the protobuf messages the servicer speaks (google.protobuf), as Connect codecs --


class ProtoBinaryCodec:
    def name(self) -> str:
        return "proto"

    def encode(self, message: Message) -> bytes:
        return message.SerializeToString()

    def decode(self, data: bytes | bytearray, message_class: type[Message]) -> Message:
        try:
            return message_class.FromString(bytes(data))
        except (DecodeError, ValueError, RuntimeError) as exc:
            name = message_class.DESCRIPTOR.full_name
            raise ConnectError(Code.INVALID_ARGUMENT, f"the request is not a valid {name} message") from exc


class ProtoJsonCodec:
    def name(self) -> str:
        return "json"

    def encode(self, message: Message) -> bytes:
        return json_format.MessageToJson(message, indent=None).encode()

    def decode(self, data: bytes | bytearray, message_class: type[Message]) -> Message:
        try:
            return json_format.Parse(bytes(data), message_class())
        except (json_format.ParseError, ValueError) as exc:
            name = message_class.DESCRIPTOR.full_name
            raise ConnectError(Code.INVALID_ARGUMENT, f"the request is not a valid {name} (JSON): {exc}") from exc


# -- a gRPC call as the servicer and its interceptors see it, carried by a Connect request --


class Aborted(grpc.aio.AbortError):
    """What `context.abort` raises: the status the servicer or an interceptor chose."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: Sequence[tuple[str, str | bytes]]) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailing = tuple(trailing)

    def connect_error(self) -> ConnectError:
        return ConnectError(Code[self.code.name] if self.code.name in Code.__members__ else Code.UNKNOWN, self.details)


class Metadatum(NamedTuple):
    """One metadata item as grpc hands them out: a (key, value) pair with names."""

    key: str
    value: str


def grpc_peer(address: str | None) -> str:
    """The browser's address as a gRPC peer string ('ipv4:1.2.3.4:5678'), as client_address() reads it."""
    if not address:
        return "unknown"
    host, _, port = address.rpartition(":")
    if ":" in host:
        return f"ipv6:[{host.strip('[]')}]:{port}"
    return f"ipv4:{host}:{port}"


class ConnectCallContext(grpc.aio.ServicerContext[Any, Any]):
    """The servicer context of one Connect call: its headers as metadata, its deadline, the
    browser's address as peer; abort raises (Aborted) as grpc's does."""

    def __init__(self, request: RequestContext[Any, Any]) -> None:
        self._request = request
        headers = request.request_headers
        # gRPC metadata keys are lower case, as the interceptors expect.
        self._metadata = tuple(Metadatum(k.lower(), v) for k, v in headers.allitems())
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailing: tuple[tuple[str, str | bytes], ...] = ()

    async def read(self) -> Any:
        raise NotImplementedError("no client streaming over Connect")

    async def write(self, message: Any) -> None:
        raise NotImplementedError("the Connect endpoint yields stream items")

    async def send_initial_metadata(self, initial_metadata: Any) -> None:
        for key, value in initial_metadata:
            self._request.response_headers.add(key, value if isinstance(value, str) else value.decode())

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> Any:
        raise Aborted(code, details, trailing_metadata)

    async def abort_with_status(self, status: Any) -> Any:
        raise Aborted(status.code, status.details, status.trailing_metadata)

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        self._trailing = tuple(trailing_metadata)

    def invocation_metadata(self) -> Any:
        return self._metadata

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def set_compression(self, compression: grpc.Compression) -> None:
        return None

    def disable_next_message_compression(self) -> None:
        return None

    def peer(self) -> str:
        return grpc_peer(self._request.client_address)

    def peer_identities(self) -> Iterable[bytes] | None:
        return None

    def peer_identity_key(self) -> str | None:
        return None

    def auth_context(self) -> Mapping[str, Iterable[bytes]]:
        return {}  # a browser presents no client certificate

    def time_remaining(self) -> float:
        remaining = self._request.timeout_ms
        return cast(float, None) if remaining is None else max(0.0, remaining / 1000.0)

    def trailing_metadata(self) -> Any:
        return self._trailing

    def code(self) -> Any:
        return self._code

    def details(self) -> Any:
        return self._details

    def add_done_callback(self, callback: Any) -> None:
        return None

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return False


@dataclass(frozen=True)
class CallDetails(grpc.HandlerCallDetails):
    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


class _HandlerCollector:
    """Stands in for the grpc server while the generated code registers the servicer, to keep
    the method handlers it builds (the same the real server gets)."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        return None

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.handlers.update(handlers)


Continuation = Callable[[grpc.HandlerCallDetails], Awaitable["grpc.RpcMethodHandler[Any, Any] | None"]]


class GatewayPipeline:
    """The gateway's method handlers behind the gRPC server's own interceptors."""

    def __init__(
        self,
        register: Callable[[Any], None],
        interceptors: Sequence[grpc.aio.ServerInterceptor],
    ) -> None:
        collector = _HandlerCollector()
        register(collector)
        self._handlers = collector.handlers
        self._interceptors = tuple(interceptors)

    async def handler(self, method: str, metadata: tuple[tuple[str, str], ...]) -> grpc.RpcMethodHandler[Any, Any]:
        async def terminal(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
            return self._handlers.get(method)

        chain: Continuation = terminal
        for interceptor in reversed(self._interceptors):
            chain = _bind(interceptor, chain)
        found = await chain(CallDetails(f"/{SERVICE.full_name}/{method}", metadata))
        if found is None:
            raise ConnectError(Code.UNIMPLEMENTED, f"{method} is not a Gateway call")
        return found


def _bind(interceptor: grpc.aio.ServerInterceptor, continuation: Continuation) -> Continuation:
    async def call(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        return await interceptor.intercept_service(continuation, details)

    return call


# -- the refresh-token cookie and its CSRF rule --


def cookie_value(headers: Any, name: str) -> str:
    for header in headers.getall("cookie"):
        for part in header.split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return str(value)
    return ""


def same_origin(headers: Any) -> bool:
    """A browser names the page's origin on every POST; ours must be this very host."""
    origin, host = headers.get("origin", ""), headers.get("host", "")
    return bool(origin) and bool(host) and origin == f"https://{host}"


def refresh_cookie(token: str, max_age: int = REFRESH_COOKIE_MAX_AGE_S) -> str:
    return f"{REFRESH_COOKIE}={token}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Strict"


def session_hint_cookie(max_age: int = REFRESH_COOKIE_MAX_AGE_S) -> str:
    return f"{SESSION_HINT_COOKIE}={1 if max_age else ''}; Path=/; Max-Age={max_age}; Secure; SameSite=Strict"


class BrowserSessions:
    """Moves refresh tokens between response bodies and the HttpOnly cookie."""

    def before(self, method: str, request: Message, ctx: RequestContext[Any, Any]) -> None:
        headers = ctx.request_headers
        if headers.get("origin") and not same_origin(headers):
            raise ConnectError(Code.PERMISSION_DENIED, "calls from another site are refused")
        if method == "Refresh":
            refresh = cast(auth_pb2.RefreshRequest, request)
            if not refresh.refresh_token:
                if not same_origin(headers):
                    raise ConnectError(
                        Code.PERMISSION_DENIED, "a refresh by cookie must come from this site's own page (Origin)"
                    )
                refresh.refresh_token = cookie_value(headers, REFRESH_COOKIE)
                if not refresh.refresh_token:
                    raise ConnectError(Code.UNAUTHENTICATED, "no session in this browser; log in")

    def after(self, method: str, response: Message, ctx: RequestContext[Any, Any]) -> Message:
        if method in ISSUES_REFRESH and ctx.request_headers.get("origin"):
            login = cast(auth_pb2.LoginResponse, response)
            if login.refresh_token:
                ctx.response_headers.add("set-cookie", refresh_cookie(login.refresh_token))
                ctx.response_headers.add("set-cookie", session_hint_cookie())
                login.refresh_token = ""  # script never sees it
        if method == "Logout":
            ctx.response_headers.add("set-cookie", refresh_cookie("", max_age=0))
            ctx.response_headers.add("set-cookie", session_hint_cookie(max_age=0))
        return response


# -- the Connect application --


def _method_info(method: MethodDescriptor) -> MethodInfo[Any, Any]:
    return MethodInfo(
        name=method.name,
        service_name=SERVICE.full_name,
        input=GetMessageClass(method.input_type),
        output=GetMessageClass(method.output_type),
        idempotency_level=IdempotencyLevel.UNKNOWN,  # POST only: no call is reachable by a GET link
        stream_type=StreamType.SERVER_STREAM if method.server_streaming else StreamType.UNARY,
    )


class GatewayConnectApp(ConnectASGIApplication[GatewayPipeline]):
    """The Gateway service's every method as a Connect endpoint over `pipeline`."""

    def __init__(self, pipeline: GatewayPipeline, *, read_max_bytes: int) -> None:
        super().__init__(
            service=pipeline,
            endpoints=self._endpoints_of,
            read_max_bytes=read_max_bytes,
            codecs=[ProtoBinaryCodec(), ProtoJsonCodec()],
        )
        self._sessions = BrowserSessions()

    @property
    def path(self) -> str:
        return f"/{SERVICE.full_name}"

    def _endpoints_of(self, pipeline: GatewayPipeline) -> Mapping[str, Any]:
        endpoints: dict[str, Any] = {}
        for method in SERVICE.methods:
            info = _method_info(method)
            path = f"/{SERVICE.full_name}/{method.name}"
            if method.server_streaming:
                endpoints[path] = Endpoint.server_stream(info, self._streaming(pipeline, method.name))
            else:
                endpoints[path] = Endpoint.unary(info, self._unary(pipeline, method.name))
        return endpoints

    def _unary(
        self, pipeline: GatewayPipeline, name: str
    ) -> Callable[[Message, RequestContext[Any, Any]], Awaitable[Message]]:
        sessions = self._sessions

        async def call(request: Message, ctx: RequestContext[Any, Any]) -> Message:
            sessions.before(name, request, ctx)
            context = ConnectCallContext(ctx)
            handler = await pipeline.handler(name, context.invocation_metadata())
            assert handler.unary_unary is not None
            try:
                response = await cast(Any, handler.unary_unary)(request, context)
            except Aborted as exc:
                _add_trailers(ctx, exc.trailing)
                raise exc.connect_error() from None
            return sessions.after(name, response, ctx)

        return call

    def _streaming(
        self, pipeline: GatewayPipeline, name: str
    ) -> Callable[[Message, RequestContext[Any, Any]], AsyncIterator[Message]]:
        sessions = self._sessions

        async def call(request: Message, ctx: RequestContext[Any, Any]) -> AsyncIterator[Message]:
            sessions.before(name, request, ctx)
            context = ConnectCallContext(ctx)
            handler = await pipeline.handler(name, context.invocation_metadata())
            assert handler.unary_stream is not None
            stream = cast(Any, handler.unary_stream)(request, context)
            try:
                async for item in stream:
                    yield item
            except Aborted as exc:
                _add_trailers(ctx, exc.trailing)
                raise exc.connect_error() from None
            finally:
                await stream.aclose()

        return call


def _add_trailers(ctx: RequestContext[Any, Any], trailing: Iterable[tuple[str, str | bytes]]) -> None:
    for key, value in trailing:
        text = value if isinstance(value, str) else value.decode()
        ctx.response_headers.add(key, text)  # read before any body, for unary and stream alike
        ctx.response_trailers.add(key, text)


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
