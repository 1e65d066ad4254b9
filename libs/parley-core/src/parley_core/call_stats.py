"""Times and classifies every unary call once, for each consumer of call figures.

Two consumers read the same calls: Prometheus (`ServiceMetrics`: calls per method and status
code, latency per method) and the heartbeat (`RequestStats`: calls, server faults and latency
buckets for the roll-out gate). One wrapper reads the clock twice and the status once per call
and hands the result to both; the labelled Prometheus series of a method are looked up when its
handler is built, not on each call.

A call the client gave up on (cancelled, or its deadline passed) ends the handler with
`asyncio.CancelledError`; it is counted as CANCELLED or DEADLINE_EXCEEDED, not as UNKNOWN, so a
caller walking away is not a server fault in the gate's error rate nor in the alert on server
errors. A call the server itself cut off when it stopped (past its grace period) is cancelled the
same way; the client is told UNAVAILABLE, and so is it counted (a fault).

Streams are left out (long-lived, they would only blur a latency figure), as are health checks
and reflection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import grpc

from parley_core.grpc_handlers import HandlerWrapper, replaced
from parley_core.metrics import ServiceMetrics
from parley_core.request_stats import SERVER_FAULTS, RequestStats

if TYPE_CHECKING:
    from parley_core.grpc_handlers import Handler

_UNCOUNTED = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class CallStatsInterceptor(HandlerWrapper):
    def __init__(self, metrics: ServiceMetrics, stats: RequestStats) -> None:
        self.metrics = metrics
        self.stats = stats
        self._stopping = False

    def server_stopping(self) -> None:
        """From here on, a cancelled call may be one the server's stop cut off (not the client)."""
        self._stopping = True

    def wrap(self, handler: Handler, method: str) -> Handler:
        if handler.unary_unary is None or method.startswith(_UNCOUNTED):
            return handler
        inner = cast(Callable[[Any, "grpc.aio.ServicerContext[Any, Any]"], Awaitable[Any]], handler.unary_unary)
        record = self._recorder(method)

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            code: grpc.StatusCode | None = grpc.StatusCode.UNKNOWN  # anything but an abort escaped
            try:
                response = await inner(request, context)
                code = context.code()
                return response
            except grpc.aio.AbortError:
                code = context.code()
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.UNAVAILABLE if self._stopping else given_up_by_client(context)
                raise
            finally:
                record(code or grpc.StatusCode.OK, time.perf_counter() - started)

        return replaced(handler, unary)

    def _recorder(self, method: str) -> Callable[[grpc.StatusCode, float], None]:
        metrics, stats = self.metrics, self.stats
        latency = metrics.rpc_latency.labels(method)
        counted_by_code: dict[grpc.StatusCode, Any] = {}

        def record(code: grpc.StatusCode, seconds: float) -> None:
            counted = counted_by_code.get(code)
            if counted is None:
                counted = counted_by_code[code] = metrics.rpc_requests.labels(method, code.name)
            counted.inc()
            latency.observe(seconds)
            stats.record(seconds * 1000.0, fault=code in SERVER_FAULTS)

        return record


def given_up_by_client(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    """Why the call's handler was cancelled: its deadline passed, or the client cancelled it."""
    remaining = context.time_remaining()
    return grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 else grpc.StatusCode.CANCELLED
