"""Parking: moving an event no consumer may apply aside, where `parley parked` and a SIEM see it.

A poison event (one its handler keeps failing on, or refuses) is parked by the durable consumer
that met it. An event its stream's owner never writes (or bytes that are no event at all) is
parked once per service as a security event, and never handed to a handler.
"""

from __future__ import annotations

import logging

import nats.js.errors
from nats.aio.msg import Msg

from parley_core.bus_events import WRONG_LAST_SEQUENCE_CODES, BusConnection
from parley_core.topology import parked_subject

log = logging.getLogger(__name__)

FOREIGN_EVENT = "foreign-event"  # Parley-Parked-Kind of an event its stream's owner never writes


def parked_headers(msg: Msg, reason: str) -> dict[str, str]:
    meta = msg.metadata
    return {
        "Parley-Parked-Reason": reason[:500],
        "Parley-Original-Subject": msg.subject,
        "Parley-Original-Stream": meta.stream,
        "Parley-Original-Sequence": str(meta.sequence.stream),
        "Parley-Consumer": meta.consumer or "",
    }


async def park(bus: BusConnection, msg: Msg, *, reason: str) -> None:
    """Move a poison event aside, where `parley parked` shows it, and stop its redelivery."""
    meta = msg.metadata
    headers = {
        **parked_headers(msg, reason),
        "Nats-Msg-Id": f"parked-{meta.stream}-{meta.sequence.stream}-{meta.consumer}",
    }
    await bus.js.publish(parked_subject(bus.service, meta.stream), msg.data, headers=headers)
    await msg.term()
    if bus.metrics is not None:
        bus.metrics.parked.labels(meta.stream).inc()
    log.error("parked poison event", extra={"subject": msg.subject, "seq": meta.sequence.stream, "reason": reason})


async def reject_foreign(bus: BusConnection, msg: Msg, *, reason: str) -> None:
    """Park an event its stream's owner never writes, once per service, as a security event.

    No service can append to auth's audit chain (SEC), so the signal is this service's own:
    the parked copy (kind `foreign-event`, on parley.parked.<service>.<stream>.<seq>, where a
    SIEM follows parley.parked.>) and an error log line with security_event set. The subject
    must be empty for the copy to land, so the service's other consumers of the stream, and
    its next start, park it no second time.
    """
    meta = msg.metadata
    subject = f"{parked_subject(bus.service, meta.stream)}.{meta.sequence.stream}"
    headers = {
        **parked_headers(msg, reason),
        "Parley-Parked-Kind": FOREIGN_EVENT,
        "Nats-Expected-Last-Subject-Sequence": "0",
    }
    try:
        await bus.js.publish(subject, msg.data, headers=headers)
    except nats.js.errors.APIError as exc:
        if exc.err_code not in WRONG_LAST_SEQUENCE_CODES:
            raise
        return  # parked already (by another consumer of ours, or before a restart)
    log.error(
        "security: refused an event its stream's owner never writes",
        extra={
            "security_event": "foreign_event_parked",
            "subject": msg.subject,
            "stream": meta.stream,
            "seq": meta.sequence.stream,
            "reason": reason,
        },
    )
