"""Catching a resumed live stream up from the log, in batches, paced by the client.

A client back after a disconnect may be thousands of events behind. Pushing that backlog
through the live buffer would overflow it at once, and a consumer per resuming stream is the
shared budget the channel feed exists to avoid. So the backlog is read with JetStream's batched
direct get (nats-server 2.11+: one request, one reply per event, an end-of-batch marker; nats-py
has no call for it): a bounded batch at a time, as gRPC accepts the events before it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from parley.common.v1.envelope_pb2 import EventEnvelope

from parley_core.envelope import decode
from parley_core.errors import Unavailable
from parley_core.nats_connect import js_api_prefix

log = logging.getLogger(__name__)

BATCH_EVENTS = 100
BATCH_BYTES = 256 * 1024  # what one resuming stream may hold in the NATS client at once
REPLY_TIMEOUT_S = 5.0
END_OF_BATCH = "204"
NOT_FOUND = "404"
UNANSWERED = "the event log did not answer a catch-up read; resume again shortly"


async def events_between(
    nc: NatsClient, *, stream: str, subject: str, after: int, up_to: int
) -> AsyncIterator[tuple[int, EventEnvelope]]:
    """Every event on `subject` at a stream position in (after, up_to], oldest first."""
    position = after
    while position < up_to:
        events, more = await _direct_batch(nc, stream=stream, subject=subject, start=position + 1)
        for seq, data in events:
            if seq > up_to:
                return
            position = seq
            if (envelope := _decoded(data, subject, seq)) is not None:
                yield position, envelope
        if more:
            continue
        # Nothing more, says the server that answered. A direct get may be answered by a replica
        # that has not yet applied the newest events; the stream's leader confirms the end.
        found = await _leader_next(nc, stream=stream, subject=subject, start=position + 1)
        if found is None or found[0] > up_to:
            return
        position = found[0]
        if (envelope := _decoded(found[1], subject, position)) is not None:
            yield position, envelope


def _decoded(data: bytes, subject: str, seq: int) -> EventEnvelope | None:
    try:
        return decode(data)
    except Exception:
        log.exception("undecodable event skipped in catch-up", extra={"subject": subject, "seq": seq})
        return None


async def _direct_batch(
    nc: NatsClient, *, stream: str, subject: str, start: int
) -> tuple[list[tuple[int, bytes]], bool]:
    """One batched direct get from position `start`: (position, data) of each event, and whether
    the server holds more after them. The server sends a whole batch at once, so a batch is the
    unit of pacing (and of memory)."""
    request = {"seq": start, "next_by_subj": subject, "batch": BATCH_EVENTS, "max_bytes": BATCH_BYTES}
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    events: list[tuple[int, bytes]] = []
    try:
        await nc.publish(f"{js_api_prefix(nc)}.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox)
        while True:
            reply = await sub.next_msg(timeout=REPLY_TIMEOUT_S)
            headers = reply.headers or {}
            status = headers.get("Status")
            if status == NOT_FOUND:
                return events, False
            if status == END_OF_BATCH:
                return events, int(headers.get("Nats-Num-Pending", "0")) > 0
            if status is not None:
                raise Unavailable(f"the event log refused a catch-up read ({status}); resume again shortly")
            events.append((int(headers["Nats-Sequence"]), reply.data))
    except (nats.errors.Error, TimeoutError):
        raise Unavailable(UNANSWERED) from None
    finally:
        with contextlib.suppress(nats.errors.Error):  # the connection is closing
            await sub.unsubscribe()


async def _leader_next(nc: NatsClient, *, stream: str, subject: str, start: int) -> tuple[int, bytes] | None:
    """The first event on `subject` from position `start`, as the stream's leader has it."""
    try:
        raw = await nc.jetstream().get_msg(stream, seq=start, subject=subject, next=True)
    except nats.js.errors.NotFoundError:
        return None
    except (nats.errors.Error, TimeoutError):
        raise Unavailable(UNANSWERED) from None
    return int(raw.seq or start), raw.data or b""
