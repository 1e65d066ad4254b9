"""One interceptor times and classifies each unary call once, and feeds both of its consumers:
Prometheus (calls per method and status code, latency) and the heartbeat's figures for the
roll-out gate (calls, server faults, latency buckets). A real grpc.aio server, real calls."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from parley_core.call_stats import CallStatsInterceptor
from parley_core.metrics import ServiceMetrics
from parley_core.request_stats import RequestStats

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


class Served:
    def __init__(self, channel: grpc.aio.Channel, metrics: ServiceMetrics, stats: RequestStats) -> None:
        self.channel = channel
        self.metrics = metrics
        self.stats = stats

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
    server = grpc.aio.server(interceptors=[CallStatsInterceptor(metrics, stats)])
    handlers = {"Ok": _ok, "Invalid": _invalid, "Unavailable": _unavailable, "Crash": _crash}
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
        yield Served(channel, metrics, stats)
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
