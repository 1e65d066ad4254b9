"""What a gRPC server interceptor is written with: its types, named once (for annotations only:
grpc's runtime classes take no type arguments), and the shape Parley's interceptors share, a
wrapper made for each method's handler."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
    # What an interceptor calls for the call's handler (the next interceptor, or the server's).
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]

Deserializer = Callable[[bytes], Any]


class HandlerWrapper(grpc.aio.ServerInterceptor):
    """Wraps the handler of each method the server has (PerMethodHandlers keeps what `wrap` makes,
    so it runs once per method): a subclass says how."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return self.wrap(handler, handler_call_details.method)

    def wrap(self, handler: Handler, method: str) -> Handler:
        raise NotImplementedError


def replaced(
    handler: Handler, behaviour: Callable[..., Any], *, request_deserializer: Deserializer | None = None
) -> Handler:
    """A handler of `handler`'s kind (unary, or a server stream) that runs `behaviour` in its place,
    with its serializers (or `request_deserializer` for requests)."""
    if handler.unary_unary is not None:
        make = grpc.unary_unary_rpc_method_handler
    else:
        make = grpc.unary_stream_rpc_method_handler
    return make(
        behaviour,
        request_deserializer=request_deserializer or handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
