"""Tracing set-up: what a span costs and carries with each exporter.

`setup_tracing` installs the process-wide provider, which OpenTelemetry lets a process set only
once, so each case runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys

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
