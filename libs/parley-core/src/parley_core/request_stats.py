"""Each instance's own request figures, reported in its heartbeats for roll-out health gates.

Counts unary calls (streams are long-lived and would only blur a latency figure) and the ones
that ended in a server-side fault; client mistakes (INVALID_ARGUMENT, NOT_FOUND, ...) are the
caller's, not a sign that a new version is unhealthy.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast

import grpc

SERVER_FAULTS = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS}
)
_UNCOUNTED = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class RequestStats:
    """Cumulative counts and the latency samples since the last heartbeat read them."""

    def __init__(self, max_samples: int = 10_000) -> None:
        self.requests = 0
        self.errors = 0
        self._latencies_ms: deque[float] = deque(maxlen=max_samples)

    def record(self, latency_ms: float, *, fault: bool) -> None:
        self.requests += 1
        self.errors += int(fault)
        self._latencies_ms.append(latency_ms)

    def take_p99_ms(self) -> float:
        """p99 over the calls since the previous take (0 when there were none)."""
        samples = sorted(self._latencies_ms)
        self._latencies_ms.clear()
        if not samples:
            return 0.0
        return samples[min(len(samples) - 1, int(len(samples) * 0.99))]


class RequestStatsInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, stats: RequestStats) -> None:
        self.stats = stats

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler_call_details.method.startswith(_UNCOUNTED):
            return handler
        inner = cast(Callable[[Any, "grpc.aio.ServicerContext[Any, Any]"], Awaitable[Any]], handler.unary_unary)
        stats = self.stats

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            fault = True
            try:
                response = await inner(request, context)
                fault = context.code() in SERVER_FAULTS
                return response
            except grpc.aio.AbortError:
                fault = context.code() in SERVER_FAULTS
                raise
            finally:
                stats.record((time.perf_counter() - started) * 1000, fault=fault)

        return grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )
