"""One interceptor times and classifies each unary call once, and feeds both of its consumers:
Prometheus (calls per method and status code, latency) and the heartbeat's figures for the
roll-out gate (calls, server faults, latency buckets). A real grpc.aio server, real calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from parley_core.call_stats import CallStatsInterceptor
from parley_core.metrics import ServiceMetrics
from parley_core.request_stats import RequestStats
from parley_testing.waiting import until

pytestmark = pytest.mark.asyncio

SERVICE = "parley.test.Calls"


async def _ok(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


async def _invalid(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the caller's mistake")


async def _unavailable(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    context.set_code(grpc.StatusCode.UNAVAILABLE)
    context.set_details("try another instance")
    return b""


async def _crash(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    raise RuntimeError("a bug")


@dataclass
class Served:
    server: grpc.aio.Server
    channel: grpc.aio.Channel
    metrics: ServiceMetrics
    stats: RequestStats
    interceptor: CallStatsInterceptor
    slow_started: asyncio.Event

    async def call(self, method: str) -> grpc.StatusCode:
        try:
            await self.channel.unary_unary(f"/{SERVICE}/{method}")(b"x")
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    def requests(self, method: str, code: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "parley_rpc_requests_total", {"method": f"/{SERVICE}/{method}", "code": code}
        )
        return value or 0.0

    def timed(self) -> float:
        total = 0.0
        for metric in self.metrics.registry.collect():
            for sample in metric.samples:
                if sample.name == "parley_rpc_latency_seconds_count":
                    total += sample.value
        return total


@pytest_asyncio.fixture
async def served() -> AsyncIterator[Served]:
    metrics = ServiceMetrics("test")
    stats = RequestStats()
    interceptor = CallStatsInterceptor(metrics, stats)
    server = grpc.aio.server(interceptors=[interceptor])
    slow_started = asyncio.Event()

    async def _slow(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        """Answers only once the caller gives up (or the server stops)."""
        slow_started.set()
        await asyncio.Event().wait()
        return request

    handlers = {"Ok": _ok, "Invalid": _invalid, "Unavailable": _unavailable, "Crash": _crash, "Slow": _slow}
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                SERVICE, {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in handlers.items()}
            )
        ]
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Served(server, channel, metrics, stats, interceptor, slow_started)
    finally:
        await channel.close()
        await server.stop(None)


async def test_each_call_is_counted_by_status_for_prometheus_and_by_fault_for_the_heartbeat(
    served: Served,
) -> None:
    assert await served.call("Ok") == grpc.StatusCode.OK
    assert await served.call("Ok") == grpc.StatusCode.OK
    assert await served.call("Invalid") == grpc.StatusCode.INVALID_ARGUMENT
    assert await served.call("Unavailable") == grpc.StatusCode.UNAVAILABLE
    assert await served.call("Crash") == grpc.StatusCode.UNKNOWN

    assert served.requests("Ok", "OK") == 2
    assert served.requests("Invalid", "INVALID_ARGUMENT") == 1
    assert served.requests("Unavailable", "UNAVAILABLE") == 1
    assert served.requests("Crash", "UNKNOWN") == 1
    assert served.timed() == 5
    # The heartbeat: every call, and as faults only the server's (not the caller's mistake).
    assert served.stats.requests == 5
    assert served.stats.errors == 2
    assert sum(served.stats.latency_buckets) == 5
    assert served.stats.take_p99_ms() > 0


async def test_health_checks_are_left_out_of_both(served: Served) -> None:
    stub = health_pb2_grpc.HealthStub(served.channel)
    await stub.Check(health_pb2.HealthCheckRequest(service=""))
    assert served.stats.requests == 0
    assert served.timed() == 0


async def test_a_call_the_client_cancels_is_cancelled_not_a_server_fault(served: Served) -> None:
    await served.call("Ok")
    call = served.channel.unary_unary(f"/{SERVICE}/Slow")(b"x")
    await asyncio.wait_for(served.slow_started.wait(), 10)
    call.cancel()
    await until(lambda: served.stats.requests == 2, "the cancelled call to be counted", 10)

    assert served.requests("Slow", "CANCELLED") == 1
    assert served.requests("Slow", "UNKNOWN") == 0
    assert served.stats.errors == 0  # the gate's error rate: no fault of the server's
    assert served.timed() == 2


async def test_a_call_whose_deadline_passed_is_deadline_exceeded_not_a_server_fault(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await served.channel.unary_unary(f"/{SERVICE}/Slow")(b"x", timeout=0.2)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await until(lambda: served.stats.requests == 1, "the expired call to be counted", 10)

    assert served.requests("Slow", "DEADLINE_EXCEEDED") == 1
    assert served.stats.errors == 0


async def test_a_call_the_stopping_server_cuts_off_is_unavailable_and_a_fault(served: Served) -> None:
    call = served.channel.unary_unary(f"/{SERVICE}/Slow")(b"x")
    await asyncio.wait_for(served.slow_started.wait(), 10)
    served.interceptor.server_stopping()
    await served.server.stop(0)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE  # what the client is told
    await until(lambda: served.stats.requests == 1, "the cut-off call to be counted", 10)

    assert served.requests("Slow", "UNAVAILABLE") == 1
    assert served.stats.errors == 1
