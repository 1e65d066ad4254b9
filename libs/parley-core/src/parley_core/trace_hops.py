"""The trace context when no span is recorded (no exporter): the W3C headers themselves.

Each hop (a served gRPC call, a consumed event) continues the caller's trace under a span id of
its own, or starts a trace, exactly as OpenTelemetry's unsampled spans did, but without building
a span: extracting the context, sampling and starting a span per hop took 4 to 12 % of gateway's,
messaging's and storage's busy CPU in `make bench`'s profile, for spans recorded nowhere. With
an exporter, parley_core.telemetry uses OpenTelemetry's own context and spans instead.
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Mapping
from contextvars import ContextVar, Token
from types import TracebackType

from opentelemetry import trace

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_HEX = frozenset("0123456789abcdef")
_NO_TRACE = "0" * 32
_NO_SPAN = "0" * 16
# Unsampled, as OpenTelemetry's ALWAYS_OFF sampler marks every span it starts.
_FLAGS = "00"

# W3C tracestate: at most 32 `key=value` members, passed on only if every one is well formed, as
# OpenTelemetry's propagator did; and at most 512 characters in all (the length W3C asks every
# vendor to carry), since the caller chooses it and it is copied into every event of its hop.
_TRACESTATE_MEMBERS = 32
_TRACESTATE_CHARS = 512
_TRACESTATE_MEMBER = re.compile(
    r"[ \t]*(?:[a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e][ \t]*"
)

_current: ContextVar[Hop | None] = ContextVar("parley_trace_hop", default=None)


def current() -> dict[str, str]:
    """The current hop's traceparent (and tracestate), to pass on; empty outside any hop."""
    hop = _current.get()
    return {} if hop is None else dict(hop.headers)


def _trace_id_of(traceparent: str | None) -> str | None:
    """The trace id of a valid W3C traceparent (lower-case hex, not all zeros), else None."""
    if not traceparent:
        return None
    parts = traceparent.strip().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == "ff" or (parts[0] == "00" and len(parts) != 4):
        return None
    version, trace_id, parent_id, flags = parts[:4]
    if len(trace_id) != 32 or len(parent_id) != 16 or len(flags) != 2:
        return None
    if not _HEX.issuperset(version + trace_id + parent_id + flags):
        return None
    if trace_id == _NO_TRACE or parent_id == _NO_SPAN:
        return None
    return trace_id


def _valid_tracestate(tracestate: str) -> bool:
    if not tracestate or len(tracestate) > _TRACESTATE_CHARS:
        return False
    members = tracestate.split(",")
    return len(members) <= _TRACESTATE_MEMBERS and all(_TRACESTATE_MEMBER.fullmatch(m) for m in members)


def next_hop(traceparent: str | None, tracestate: str | None = None) -> dict[str, str]:
    """The headers of a hop that continues `traceparent`'s trace (a new trace if it is missing or
    invalid), with a new span id; the caller's tracestate goes on with its trace if well formed."""
    trace_id = _trace_id_of(traceparent)
    span_id = f"{random.getrandbits(64) or 1:016x}"
    if trace_id is None:
        return {TRACEPARENT: f"00-{random.getrandbits(128) or 1:032x}-{span_id}-{_FLAGS}"}
    headers = {TRACEPARENT: f"00-{trace_id}-{span_id}-{_FLAGS}"}
    if tracestate is not None and _valid_tracestate(tracestate):
        headers[TRACESTATE] = tracestate
    return headers


class Hop:
    """`with Hop(traceparent, tracestate):` the block runs as one hop of that trace (see next_hop).

    A plain class, not a generator: it runs once per call and per consumed event. It yields
    OpenTelemetry's invalid span, which records nothing, where a recorded span would be. Its
    headers are made when first read: most consumed events (the gateway's live feed, storage's
    archive) pass no trace on, and a hop's checks and random ids cost more than its bookkeeping.
    """

    __slots__ = ("_headers", "_token", "_traceparent", "_tracestate")

    def __init__(self, traceparent: str | None, tracestate: str | None = None) -> None:
        self._traceparent = traceparent
        self._tracestate = tracestate
        self._headers: dict[str, str] | None = None
        self._token: Token[Hop | None] | None = None

    @property
    def headers(self) -> Mapping[str, str]:
        """This hop's traceparent (and tracestate), the same on every read."""
        if self._headers is None:
            self._headers = next_hop(self._traceparent, self._tracestate)
            self._traceparent = self._tracestate = None  # what the client sent is not kept longer
        return self._headers

    def __enter__(self) -> trace.Span:
        self._token = _current.set(self)
        return trace.INVALID_SPAN

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        assert self._token is not None
        # Closed from another context (a stream's generator finalized elsewhere): nothing of ours to undo there.
        with contextlib.suppress(ValueError):
            _current.reset(self._token)
