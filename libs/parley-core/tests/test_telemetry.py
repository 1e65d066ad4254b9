"""Tracing set-up: what a span costs and carries with each exporter.

`setup_tracing` installs the process-wide provider, which OpenTelemetry lets a process set only
once, so each case runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import json, sys
from parley_core import telemetry
telemetry.setup_tracing(service="probe", version="0", instance_id="p-1", exporter=sys.argv[1], otlp_endpoint="")
with telemetry.continued_from({}, "consume") as span:
    headers = telemetry.current_trace_headers()
    recording = span.is_recording()
print(json.dumps({
    "recording": recording,
    "traceparent": headers.get("traceparent", ""),
    "same_tracer": telemetry.tracer("a") is telemetry.tracer("a"),
}))
"""


def probe(exporter: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, exporter], capture_output=True, text=True, timeout=60, check=True
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_with_no_exporter_spans_are_not_recorded_but_the_trace_context_still_travels() -> None:
    result = probe("none")
    assert result["recording"] is False
    version, trace_id, span_id, _flags = str(result["traceparent"]).split("-")
    assert version == "00"
    assert int(trace_id, 16)
    assert int(span_id, 16)
    assert result["same_tracer"] is True


def test_with_an_exporter_spans_are_recorded() -> None:
    assert probe("console")["recording"] is True


CONSUMER_PROBE = """
import json, sys
from parley_core import telemetry
telemetry.setup_tracing(service="probe", version="0", instance_id="p-1", exporter=sys.argv[1], otlp_endpoint="")
sent = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tracestate": "vendor=1"}
with telemetry.continued_from(sent, "consume"):
    inside = telemetry.current_trace_headers()
print(json.dumps({"inside": inside, "after": telemetry.current_trace_headers()}))
"""


@pytest.mark.parametrize("exporter", ["none", "console"])
def test_a_consumed_event_continues_the_trace_its_headers_carry(exporter: str) -> None:
    """An event's handler runs in the publisher's trace, under a span id of its own, whether
    spans are recorded or not (without an exporter no span is built: parley_core.trace_hops)."""
    done = subprocess.run(
        [sys.executable, "-c", CONSUMER_PROBE, exporter], capture_output=True, text=True, timeout=60, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    _, trace_id, span_id, _ = result["inside"]["traceparent"].split("-")
    assert trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert span_id != "00f067aa0ba902b7"
    assert result["inside"]["tracestate"] == "vendor=1"
    assert "traceparent" not in result["after"]


GRPC_PROBE = """
import asyncio, json, sys
import grpc
from parley_core import telemetry
telemetry.setup_tracing(service="probe", version="0", instance_id="p-1", exporter=sys.argv[1], otlp_endpoint="")

async def echo_context(request: bytes, context) -> bytes:
    return telemetry.current_trace_headers().get("traceparent", "").encode()

async def main() -> None:
    server = grpc.aio.server(interceptors=telemetry.server_interceptors())
    handler = grpc.unary_unary_rpc_method_handler(echo_context)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("probe.Echo", {"Echo": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    in_metadata = sys.argv[2] == "metadata"  # the caller carries the context, as the gateway does
    interceptors = telemetry.client_interceptors(context_in_metadata=in_metadata)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=interceptors) as channel:
        call = channel.unary_unary("/probe.Echo/Echo")
        with telemetry.continued_from({}, "client"):
            sent = telemetry.current_trace_headers()["traceparent"]
            metadata = telemetry.trace_metadata() if in_metadata else None
            seen = [(await call(b"", metadata=metadata)).decode() for _ in range(2)]
    await server.stop(None)
    print(json.dumps({"sent": sent, "seen": seen}))

asyncio.run(main())
"""


@pytest.mark.parametrize(
    ("exporter", "carried_by"), [("none", "interceptor"), ("none", "metadata"), ("console", "metadata")]
)
def test_a_calls_trace_context_reaches_the_server(exporter: str, carried_by: str) -> None:
    """The lean interceptors of `none` (no span attributes, no wrapped context), or a caller that
    puts `trace_metadata()` on each call on a channel without them (the gateway), still carry the
    caller's trace into the handler, under a server span of its own, on every call."""
    done = subprocess.run(
        [sys.executable, "-c", GRPC_PROBE, exporter, carried_by], capture_output=True, text=True, timeout=60, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    _, sent_trace, sent_span, _ = result["sent"].split("-")
    for seen in result["seen"]:
        _, trace_id, span_id, _ = seen.split("-")
        assert trace_id == sent_trace
        assert span_id != sent_span
    assert result["seen"][0] != result["seen"][1]  # a span of its own per call
