"""The Gateway service as a Connect ASGI application: each method an endpoint, its messages in
protobuf binary or JSON, each call run through the gRPC pipeline (web_calls.py) and the
browser session's cookie rules (web_sessions.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, cast

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.method import IdempotencyLevel, MethodInfo, StreamType
from connectrpc.request import RequestContext
from connectrpc.server import ConnectASGIApplication, Endpoint
from google.protobuf import json_format
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from parley_gateway.web_calls import SERVICE, Aborted, ConnectCallContext, GatewayPipeline
from parley_gateway.web_sessions import BrowserSessions

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
