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


# A probe process's start: tracing set up with the exporter its first argument names, and a
# server whose one method, probe.Echo/Echo, answers with `echo_context(request, context)`.
PROBE_SERVER = """
import asyncio, json, sys
import grpc
from parley_core import telemetry
telemetry.setup_tracing(service="probe", version="0", instance_id="p-1", exporter=sys.argv[1], otlp_endpoint="")

async def echo_server(echo_context) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(interceptors=telemetry.server_interceptors())
    handler = grpc.unary_unary_rpc_method_handler(echo_context)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("probe.Echo", {"Echo": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port
"""

GRPC_PROBE = (
    PROBE_SERVER
    + """
async def echo_context(request: bytes, context) -> bytes:
    return telemetry.current_trace_headers().get("traceparent", "").encode()

async def main() -> None:
    server, port = await echo_server(echo_context)
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
)


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


STATE_PROBE = (
    PROBE_SERVER
    + """
parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
state = json.loads(sys.stdin.read())

async def echo_context(request: bytes, context) -> bytes:
    return json.dumps(telemetry.current_trace_headers()).encode()

async def main() -> None:
    server, port = await echo_server(echo_context)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        metadata = (("traceparent", parent), ("tracestate", state))
        served = await channel.unary_unary("/probe.Echo/Echo")(b"", metadata=metadata)
    await server.stop(None)
    with telemetry.continued_from({"traceparent": parent, "tracestate": state}, "consume"):
        consumed = telemetry.current_trace_headers()
    print(json.dumps({"served": json.loads(served), "consumed": consumed}))

asyncio.run(main())
"""
)


def state_probe(exporter: str, state: str) -> dict[str, dict[str, str]]:
    done = subprocess.run(
        [sys.executable, "-c", STATE_PROBE, exporter],
        input=json.dumps(state),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


HOSTILE_TRACESTATES = {
    "member without a key": "vendor=1,=2",
    "33 members": ",".join(f"v{n}=1" for n in range(33)),
    "a value of a forbidden character": "vendor=a=b",
    "not a list at all": "<script>alert(1)</script>",
}


@pytest.mark.parametrize("exporter", ["none", "console"])
@pytest.mark.parametrize("state", HOSTILE_TRACESTATES.values(), ids=HOSTILE_TRACESTATES.keys())
def test_a_callers_malformed_tracestate_goes_no_further(exporter: str, state: str) -> None:
    """A tracestate is the caller's choice and goes on to every call of its hop (events keep none:
    test_bus.py): one that is not W3C's list of at most 32 well-formed members is dropped on a
    served call and on a consumed event, with or without an exporter; the trace goes on."""
    result = state_probe(exporter, state)
    for hop in (result["served"], result["consumed"]):
        assert hop["traceparent"].split("-")[1] == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert "tracestate" not in hop


def test_without_an_exporter_a_tracestate_over_512_characters_goes_no_further() -> None:
    """Well-formed members, but more than W3C asks every vendor to carry (an event header of an
    insider's may be as long as NATS lets a message be)."""
    result = state_probe("none", "vendor=" + "x" * 250 + ",other=" + "y" * 250 + ",third=z")
    for hop in (result["served"], result["consumed"]):
        assert "tracestate" not in hop


def test_a_well_formed_tracestate_goes_on_with_its_trace() -> None:
    state = "rojo=00f067aa0ba902b7, congo=t61rcWkgMzE"
    result = state_probe("none", state)
    assert result["served"]["tracestate"] == state
    assert result["consumed"]["tracestate"] == state
