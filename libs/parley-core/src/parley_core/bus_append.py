"""Appending to the event log: one acknowledged publish per event, deduplicated and ordered.

A write is one acknowledged publish: `Nats-Msg-Id` (the event id) makes a retried append a
no-op inside the stream's duplicate window, and `Nats-Expected-Last-Subject-Sequence` makes
the stream refuse an append to an aggregate that changed since it was read. An append sent
before the one it follows is acknowledged (EventLog's pipelined round) also names that one's
event id (`Nats-Expected-Last-Msg-Id`): the stream takes it only right after that event.
"""

from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors
from nats.js import api

from parley_core import deadline, telemetry
from parley_core.bus_events import (
    WRONG_LAST_MSG_ID,
    WRONG_LAST_SEQUENCE_CODES,
    Appended,
    AppendNotMade,
    AppendOutcomeUnknown,
    BusConnection,
    ConcurrencyConflict,
    OwnWrites,
    ReceivedEvent,
    already_open,
)
from parley_core.envelope import NewEvent, decode, seal
from parley_core.topology import stream_for_subject
from parley_core.trace_hops import TRACEPARENT

MARKER_ATTEMPTS = 5
# One publish waits this long for its ack before it is sent again (same Nats-Msg-Id).
PUBLISH_TIMEOUT_S = 5.0
PUBLISH_RETRY_MAX_S = 0.5
# A publish that failed with one of these may have reached the server, or may yet reach it.
MAYBE_SENT = (nats.errors.TimeoutError, nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError)
# 503 answers that mean "not now" (no cluster leader yet, JetStream still starting): retried. Any
# other 503 is the stream's own refusal (its limits, its store), which waiting does not change.
TEMPORARILY_UNAVAILABLE = frozenset({10008, 10076})  # JSClusterNotAvailErr, JSNotEnabledErr


async def append(
    bus: BusConnection,
    subject: str,
    event: NewEvent,
    *,
    aggregate_version: int,
    expected_last_subject_seq: int | None,
    expected_last_stream_seq: int | None = None,
    expected_last_of: str | None = None,
    expected_last_msg_id: str | None = None,
    own: OwnWrites | None = None,
) -> Appended:
    """Append one event. `expected_last_subject_seq=0` means the subject must be empty.

    `expected_last_stream_seq` orders the append after the whole stream's last message
    (a single-writer chain over a stream, such as the audit chain on SEC). `expected_last_of`
    checks `expected_last_subject_seq` against the newest message of other subjects (a wildcard)
    instead of the append's own: a new aggregate appended after every one of its kind, so that a
    rule over all of them (one unfinished roll-out per service) holds between two writers.
    `expected_last_msg_id`: the event id the stream's newest message must have (any subject):
    this append goes right after that event or not at all.
    `own`: this process's reader of the stream, told of the append while it is on its way.
    """
    # The traceparent only (fixed-format hex): a tracestate is the client's text, and what goes in
    # here is kept in the durable log (envelope and stream headers) for as long as the event.
    trace_headers = {k: v for k, v in telemetry.current_trace_headers().items() if k == TRACEPARENT}
    envelope = seal(event, aggregate_version=aggregate_version, producer=bus.producer, trace_context=trace_headers)
    headers = {**trace_headers, "Nats-Msg-Id": event.event_id}
    if expected_last_subject_seq is not None:
        headers["Nats-Expected-Last-Subject-Sequence"] = str(expected_last_subject_seq)
        if expected_last_of is not None:
            headers["Nats-Expected-Last-Subject-Sequence-Subject"] = expected_last_of
    if expected_last_stream_seq is not None:
        headers["Nats-Expected-Last-Sequence"] = str(expected_last_stream_seq)
    if expected_last_msg_id is not None:
        headers["Nats-Expected-Last-Msg-Id"] = expected_last_msg_id
    data = envelope.SerializeToString()
    # The stream's name and sequence are the acknowledgement's (or the delivery's) to say.
    sealed = already_open(
        ReceivedEvent(envelope=envelope, subject=subject, stream="", stream_seq=0, num_delivered=1, headers=headers),
        event.payload,
    )
    if own is not None:
        own.expect(data, sealed)
    try:
        ack = await publish_confirmed(bus, subject, data, headers)
    except nats.js.errors.APIError as exc:
        if exc.err_code not in WRONG_LAST_SEQUENCE_CODES and exc.err_code != WRONG_LAST_MSG_ID:
            raise
        # The server checks the expected sequence before Nats-Msg-Id, so a retry of an
        # append that did land (its ack was lost) looks like a conflict: it is our own write.
        if (earlier := await own_last_write(bus, stream_for_subject(subject).name, subject, event)) is not None:
            return Appended(stream_seq=earlier, duplicate=True)
        raise ConcurrencyConflict(f"{subject} changed since it was read") from exc
    finally:
        if own is not None:
            own.forget(data)
    if bus.metrics is not None and not ack.duplicate:
        bus.metrics.appended_to(ack.stream).inc()
    if ack.duplicate:
        return Appended(stream_seq=ack.seq, duplicate=True)
    return Appended(stream_seq=ack.seq, duplicate=False, written=sealed.stored_at(ack.stream, ack.seq))


async def publish_confirmed(bus: BusConnection, subject: str, data: bytes, headers: dict[str, str]) -> api.PubAck:
    """One publish whose outcome is known when this returns or raises AppendNotMade, else AppendOutcomeUnknown.

    nats-py keeps what is published while it reconnects in a buffer that it sends once
    connected again, long after the publish timed out: a write that lands after its caller
    was told it failed. So nothing is published while disconnected (the caller waits for the
    connection, within its deadline), and a publish whose answer did not come (a timeout, a
    connection lost in flight) is sent again with the same Nats-Msg-Id once connected: the
    buffered copy goes first on the same connection, so the second answer (stored, or a
    duplicate of the first) settles what happened. Only a deadline that passes before any
    answer leaves the outcome unknown, and the error says so.
    """
    loop = asyncio.get_running_loop()
    give_up = deadline.give_up_at()
    maybe_sent = False
    delay = 0.02
    while True:
        if bus.nc.is_closed or bus.nc.is_draining_pubs:  # this service is stopping: nothing more goes out
            raise AppendOutcomeUnknown() if maybe_sent else AppendNotMade("this instance is stopping; retry")
        left = give_up - loop.time()
        if left > 0 and bus.nc.is_connected:
            try:
                return await bus.js.publish(subject, data, headers=headers, timeout=min(PUBLISH_TIMEOUT_S, left))
            except nats.js.errors.NoStreamResponseError:
                pass  # nobody took it (a stream without a leader yet): not stored; try again
            except nats.js.errors.ServiceUnavailableError as exc:
                if exc.err_code and exc.err_code not in TEMPORARILY_UNAVAILABLE:
                    raise AppendNotMade(
                        f"the event log refused the change ({exc.description}); nothing was stored"
                    ) from exc
            except MAYBE_SENT:
                maybe_sent = True  # on its way, or in nats-py's buffer: it may still land
        left = give_up - loop.time()
        if left <= 0:
            if maybe_sent:
                raise AppendOutcomeUnknown()
            raise AppendNotMade(
                "the event log is unreachable; nothing was stored, retry shortly"
                if not bus.nc.is_connected
                else "the event log did not take the change; nothing was stored, retry shortly"
            )
        await asyncio.sleep(min(delay, left))  # waiting for the connection or a stream leader, within the deadline
        delay = min(delay * 2, PUBLISH_RETRY_MAX_S)


async def own_last_write(bus: BusConnection, stream: str, subject: str, event: NewEvent) -> int | None:
    """Stream sequence of the subject's newest message if it is `event` itself."""
    try:
        raw = await bus.js.get_last_msg(stream, subject, direct=True)
    except nats.js.errors.NotFoundError:
        return None
    if (raw.headers or {}).get("Nats-Msg-Id") == event.event_id:
        return int(raw.seq or 0)
    return None


async def last_subject_seq(bus: BusConnection, stream: str, subject: str) -> int:
    """Stream sequence of the newest event on a subject, 0 when there is none."""
    try:
        raw = await bus.js.get_last_msg(stream, subject, direct=True)
    except nats.js.errors.NotFoundError:
        return 0
    return int(raw.seq or 0)


async def append_after_last(bus: BusConnection, subject: str, event: NewEvent) -> int:
    """Append at the subject's newest event with the next aggregate version, for an aggregate
    this service keeps no version of (a marker, an audited record); returns the event's stream
    sequence (the earlier one when the event id was appended already)."""
    stream = stream_for_subject(subject).name
    for _ in range(MARKER_ATTEMPTS):
        try:
            raw = await bus.js.get_last_msg(stream, subject, direct=True)
            last, version = int(raw.seq or 0), decode(raw.data or b"").aggregate_version
        except nats.js.errors.NotFoundError:
            last, version = 0, 0
        try:
            appended = await append(bus, subject, event, aggregate_version=version + 1, expected_last_subject_seq=last)
        except ConcurrencyConflict:
            continue  # appended to meanwhile: read the new last event and try again
        return appended.stream_seq  # a duplicate's ack names the earlier append's sequence
    raise ConcurrencyConflict(f"{subject} kept changing; try again")
