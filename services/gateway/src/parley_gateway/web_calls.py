"""A browser's Connect call as the gateway's gRPC method handler sees it: the servicer context,
the call details, and the gRPC server's own interceptors in front (see web.py for why)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import grpc
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from google.protobuf.descriptor import ServiceDescriptor
from parley.gateway.v1 import gateway_pb2

SERVICE: ServiceDescriptor = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"]


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
