"""Catching a resumed live stream up from the log, one event at a time, paced by the client.

A client back after a disconnect may be thousands of events behind. Pushing that backlog
through the live buffer would overflow it at once; reading it with direct gets as gRPC accepts
each event keeps the gateway's memory flat however far behind the client is.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import nats.js.errors
from nats.js import JetStreamContext
from parley.common.v1.envelope_pb2 import EventEnvelope

from parley_core.envelope import decode

log = logging.getLogger(__name__)


async def events_after(
    js: JetStreamContext, *, stream: str, subject: str, after: int
) -> AsyncIterator[tuple[int, EventEnvelope]]:
    """Every event on `subject` with a stream position above `after`, oldest first, until the end of the log."""
    position = after
    while True:
        try:
            raw = await js.get_msg(stream, seq=position + 1, subject=subject, direct=True, next=True)
        except nats.js.errors.NotFoundError:
            return
        position = int(raw.seq or position + 1)
        try:
            yield position, decode(raw.data or b"")
        except Exception:
            log.exception("undecodable event skipped in catch-up", extra={"subject": subject, "seq": position})
