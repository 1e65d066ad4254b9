"""OpenTelemetry tracing across gRPC and NATS, and the process's metrics exporter.

gRPC calls are traced by the stock instrumentation's interceptors; across NATS the W3C trace
context travels in message headers (and in the event envelope), so one chat send is one trace
through gateway, messaging, the bus and storage. Without an exporter no span is built at all: the
context is the W3C headers themselves, a span id per hop (parley_core.trace_hops).
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, cast

import grpc
from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, DEFAULT_ON

from parley_core import trace_hops
from parley_core.config import TraceExporter
from parley_core.grpc_handlers import HandlerWrapper, replaced

if TYPE_CHECKING:
    from parley_core.grpc_handlers import Handler

_provider: TracerProvider | None = None
_spans_recorded = True  # until setup_tracing says there is no exporter
_meter_provider: MeterProvider | None = None


def _span_line(span: ReadableSpan) -> str:
    """One compact JSON line per span, so span logs can be grepped and parsed."""
    ctx = span.get_span_context()
    parent = span.parent
    return (
        json.dumps(
            {
                "span": span.name,
                "trace_id": format(ctx.trace_id, "032x") if ctx else "",
                "span_id": format(ctx.span_id, "016x") if ctx else "",
                "parent_id": format(parent.span_id, "016x") if parent else "",
                "service": span.resource.attributes.get("service.name", ""),
                "start_ns": span.start_time,
                "end_ns": span.end_time,
            }
        )
        + "\n"
    )


def _resource(service: str, version: str, instance_id: str) -> Resource:
    return Resource.create({"service.name": service, "service.version": version, "service.instance.id": instance_id})


def setup_tracing(*, service: str, version: str, instance_id: str, exporter: TraceExporter, otlp_endpoint: str) -> None:
    """Install the process-wide tracer provider. `none` still propagates context.

    With `none` no span is recorded: recording spans that go nowhere took 15 to 22 % of the
    gateway's and messaging's busy CPU in the bench profile. Unsampled spans still get trace
    and span ids and pass the context on through gRPC and NATS headers.
    """
    global _provider
    resource = _resource(service, version, instance_id)
    global _spans_recorded
    _spans_recorded = exporter != "none"
    provider = TracerProvider(resource=resource, sampler=ALWAYS_OFF if exporter == "none" else DEFAULT_ON)
    if exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stdout, formatter=_span_line)))
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True)))
    trace.set_tracer_provider(provider)
    _provider = provider


def setup_metrics(*, service: str, version: str, instance_id: str, exporter: TraceExporter, otlp_endpoint: str) -> None:
    """Install the process-wide meter provider: with ``otlp`` metrics go to the same collector as
    spans; otherwise instruments stay no-ops (the gRPC status calls still answer)."""
    global _meter_provider
    if exporter != "otlp":
        return
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    resource = _resource(service, version, instance_id)
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=otlp_endpoint, insecure=True))
    _meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    metrics.set_meter_provider(_meter_provider)


def setup_telemetry(
    *, service: str, version: str, instance_id: str, exporter: TraceExporter, otlp_endpoint: str
) -> None:
    """Tracing and metrics for one service process, exported the same way."""
    options = {"service": service, "version": version, "instance_id": instance_id, "otlp_endpoint": otlp_endpoint}
    setup_tracing(exporter=exporter, **options)
    setup_metrics(exporter=exporter, **options)


def shutdown_tracing() -> None:
    if _provider is not None:
        _provider.shutdown()
    if _meter_provider is not None:
        _meter_provider.shutdown()


@functools.cache
def tracer(name: str) -> trace.Tracer:
    """One tracer per name: the provider builds a new one on every `get_tracer` call.

    Cached before `setup_tracing` it is a proxy that follows the provider installed later.
    """
    return trace.get_tracer(name)


def internal_span(tracer_name: str, span_name: str) -> AbstractContextManager[object]:
    """A span around a process's own work (no message crosses it), or none when no exporter
    records spans: an unrecorded span still costs its ids and two context switches, which was
    about 3 % of storage's busy samples at one span per archived batch (bench profile)."""
    return tracer(tracer_name).start_as_current_span(span_name) if _spans_recorded else nullcontext()


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """With an exporter, the stock instrumentation's spans; without one, only the trace context.

    The stock interceptors build a span's attributes and wrap every call's context even when the
    span is recorded nowhere: 14 % of the gateway's busy CPU in the bench profile.
    """
    if _spans_recorded:
        return [aio_server_interceptor()]  # type: ignore[no-untyped-call]
    return [_CarryTraceContext()]


def client_interceptors(*, context_in_metadata: bool = False) -> list[grpc.aio.ClientInterceptor]:
    """With an exporter, the stock client spans; without one, an interceptor that only carries the
    trace context, or none for a caller that puts `trace_metadata()` in each call's metadata itself
    (`context_in_metadata`): any client interceptor turns gRPC's call into its slower intercepted
    kind, which cost the gateway about 30 µs per forwarded call."""
    if _spans_recorded:
        return list(aio_client_interceptors())  # type: ignore[no-untyped-call]
    return [] if context_in_metadata else [_InjectTraceContext()]


def trace_metadata() -> tuple[tuple[str, str], ...]:
    """The current trace context as call metadata, for a channel made with
    `client_interceptors(context_in_metadata=True)`; empty with an exporter, whose interceptors add it."""
    return () if _spans_recorded else tuple(trace_hops.current().items())


def _server_hop(context: grpc.aio.ServicerContext[Any, Any]) -> trace_hops.Hop:
    """An unrecorded server span: the caller's trace goes on (or a new one starts) with an id of its own."""
    traceparent = tracestate = None
    for key, value in context.invocation_metadata() or ():
        if key == trace_hops.TRACEPARENT:
            traceparent = str(value)
        elif key == trace_hops.TRACESTATE:
            tracestate = str(value)
    return trace_hops.Hop(traceparent, tracestate)


class _CarryTraceContext(HandlerWrapper):
    """Each call runs in its caller's trace context, so NATS headers and downstream calls carry it."""

    def wrap(self, handler: Handler, method: str) -> Handler:
        if handler.unary_unary is not None:
            inner = cast(Callable[..., Awaitable[Any]], handler.unary_unary)

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                with _server_hop(context):
                    return await inner(request, context)

            return replaced(handler, unary)
        if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
            inner_stream = cast(Callable[..., AsyncIterator[Any]], handler.unary_stream)

            async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                with _server_hop(context):
                    async for item in inner_stream(request, context):
                        yield item

            return replaced(handler, stream)
        return handler


def _carrying_context(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    carrier = current_trace_headers()
    if not carrier:
        return details
    metadata = grpc.aio.Metadata(*(details.metadata or ()), *carrier.items())
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _InjectTraceContext(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    """The current trace context in each outgoing call's metadata, no client span."""

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(_carrying_context(client_call_details), request)

    intercept_unary_stream = intercept_unary_unary  # a stream's call carries it the same way


def current_trace_headers() -> dict[str, str]:
    """The current span's W3C context (traceparent, tracestate) for a NATS message."""
    if not _spans_recorded:
        return trace_hops.current()
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def continued_from(
    headers: Mapping[str, str] | None, span_name: str, **attributes: Any
) -> AbstractContextManager[trace.Span]:
    """Open a consumer span that continues the trace carried in a NATS message's headers
    (without an exporter, an unrecorded hop of that trace: parley_core.trace_hops)."""
    if not _spans_recorded:
        headers = headers or {}
        return trace_hops.Hop(headers.get(trace_hops.TRACEPARENT), headers.get(trace_hops.TRACESTATE))
    return _consumer_span(headers, span_name, **attributes)


@contextmanager
def _consumer_span(headers: Mapping[str, str] | None, span_name: str, **attributes: Any) -> Iterator[trace.Span]:
    parent = propagate.extract(dict(headers or {}))
    token = otel_context.attach(parent)
    try:
        with tracer("parley.bus").start_as_current_span(
            span_name, kind=trace.SpanKind.CONSUMER, attributes=attributes
        ) as span:
            yield span
    finally:
        otel_context.detach(token)
