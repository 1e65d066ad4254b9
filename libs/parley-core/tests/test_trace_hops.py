"""The trace context without an exporter: each hop continues its caller's trace under a span id of its own."""

from __future__ import annotations

import asyncio

import pytest

from parley_core import trace_hops

PARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{PARENT_TRACE}-00f067aa0ba902b7-01"


def parts(traceparent: str) -> list[str]:
    return traceparent.split("-")


def test_a_hop_continues_its_callers_trace_with_a_span_of_its_own() -> None:
    first = trace_hops.next_hop(PARENT, "vendor=1")
    second = trace_hops.next_hop(PARENT, "vendor=1")
    version, trace_id, span_id, flags = parts(first["traceparent"])
    assert (version, trace_id, flags) == ("00", PARENT_TRACE, "00")
    assert len(span_id) == 16
    assert int(span_id, 16)
    assert span_id != "00f067aa0ba902b7"
    assert first["tracestate"] == "vendor=1"
    assert parts(second["traceparent"])[2] != span_id


@pytest.mark.parametrize(
    "traceparent",
    [
        None,
        "",
        "garbage",
        f"00-{'0' * 32}-00f067aa0ba902b7-01",  # no trace
        f"00-{PARENT_TRACE}-{'0' * 16}-01",  # no parent span
        f"ff-{PARENT_TRACE}-00f067aa0ba902b7-01",  # the version W3C forbids
        f"00-{PARENT_TRACE.upper()}-00f067aa0ba902b7-01",  # upper-case hex
        f"00-{PARENT_TRACE}-00f067aa0ba902b7-01-extra",  # version 00 has four fields
        f"00-{PARENT_TRACE[:-1]}-00f067aa0ba902b7-01",
    ],
)
def test_a_missing_or_invalid_traceparent_starts_a_new_trace(traceparent: str | None) -> None:
    headers = trace_hops.next_hop(traceparent, "vendor=1")
    version, trace_id, span_id, _ = parts(headers["traceparent"])
    assert version == "00"
    assert len(trace_id) == 32
    assert int(trace_id, 16)
    assert int(span_id, 16)
    assert trace_id != PARENT_TRACE
    assert "tracestate" not in headers  # the state of a trace not continued does not go on


def test_a_later_version_is_read_by_its_first_four_fields() -> None:
    headers = trace_hops.next_hop(f"01-{PARENT_TRACE}-00f067aa0ba902b7-01-more")
    assert parts(headers["traceparent"])[1] == PARENT_TRACE


def test_the_current_headers_are_the_hops_inside_it_and_the_outer_ones_after() -> None:
    assert trace_hops.current() == {}
    with trace_hops.Hop(PARENT) as span:
        outer = trace_hops.current()
        assert parts(outer["traceparent"])[1] == PARENT_TRACE
        assert not span.is_recording()
        with trace_hops.Hop(outer["traceparent"]):
            inner = trace_hops.current()
            assert parts(inner["traceparent"])[1] == PARENT_TRACE
            assert inner != outer
        assert trace_hops.current() == outer
    assert trace_hops.current() == {}


async def test_concurrent_hops_do_not_see_each_other() -> None:
    """Each gRPC call and consumed event runs in its own task: its hop is its own."""
    started = asyncio.Event()
    seen: dict[str, str] = {}

    async def hop(name: str, traceparent: str) -> None:
        with trace_hops.Hop(traceparent):
            if name == "a":
                await started.wait()
            else:
                started.set()
            seen[name] = parts(trace_hops.current()["traceparent"])[1]

    other_trace = "a" * 32
    await asyncio.gather(hop("a", PARENT), hop("b", f"00-{other_trace}-00f067aa0ba902b7-01"))
    assert seen == {"a": PARENT_TRACE, "b": other_trace}


async def test_a_hop_passes_the_same_headers_on_every_read_and_to_its_tasks() -> None:
    """The headers are made when first read (most hops pass nothing on), then kept: one span id
    per hop, whoever reads it and when."""

    async def read() -> dict[str, str]:
        return trace_hops.current()

    with trace_hops.Hop(PARENT, "vendor=1"):
        first = await asyncio.create_task(read())  # a task the hop started reads it first
        assert trace_hops.current() == first
        assert trace_hops.current() == first
        assert first["tracestate"] == "vendor=1"
        assert parts(first["traceparent"])[1] == PARENT_TRACE
