"""Reading the SEC stream in tests, as a SIEM would."""

from __future__ import annotations

from nats.aio.client import Client
from parley.auth.v1.events_pb2 import SecurityEventRecorded

from parley_core.audit import StoredRecord
from parley_core.envelope import decode, open_payload
from parley_testing.nats import NatsTestServer
from parley_testing.platform import RunningPlatform

__all__ = ["audit_records", "platform_security_events", "security_events"]


async def security_events(nats_server: NatsTestServer, kind: str) -> list[SecurityEventRecorded]:
    """Every record of one kind (parley.sec.<kind>.>) written so far."""
    nc = await nats_server.connect("platform")
    try:
        return await _read(nc, kind)
    finally:
        await nc.close()


async def audit_records(nats_server: NatsTestServer, *, timeout: float) -> list[StoredRecord]:
    """Every audit record on the live SEC stream up to its newest message, by stream position
    (other messages on SEC skipped)."""
    nc = await nats_server.connect("platform")
    js = nc.jetstream()
    last = (await js.stream_info("SEC")).state.last_seq
    sub = await js.subscribe("parley.sec.>", stream="SEC", ordered_consumer=True)
    found: list[StoredRecord] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=timeout)
            payload = open_payload(decode(msg.data))
            if isinstance(payload, SecurityEventRecorded):
                found.append(StoredRecord(position=msg.metadata.sequence.stream, record=payload))
            if msg.metadata.sequence.stream >= last:
                return found
    finally:
        await sub.unsubscribe()
        await nc.close()


async def platform_security_events(platform: RunningPlatform, kind: str) -> list[SecurityEventRecorded]:
    """The same from a platform `parley up` runs, as its platform identity."""
    nc = await platform.nats(name="test-siem")
    try:
        return await _read(nc, kind)
    finally:
        await nc.close()


async def _read(nc: Client, kind: str) -> list[SecurityEventRecorded]:
    js = nc.jetstream()
    sub = await js.subscribe(f"parley.sec.{kind}.>", stream="SEC", ordered_consumer=True)
    found: list[SecurityEventRecorded] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=2.0)
            record = SecurityEventRecorded()
            record.ParseFromString(decode(msg.data).payload)
            found.append(record)
    except TimeoutError:
        pass
    finally:
        await sub.unsubscribe()
    return found
