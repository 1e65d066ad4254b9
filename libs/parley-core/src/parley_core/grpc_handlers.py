"""The types a gRPC server interceptor is written with, named once (for annotations only: grpc's
runtime classes take no type arguments)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
    # What an interceptor calls for the call's handler (the next interceptor, or the server's).
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]
