"""Reading the SEC stream in tests, as a SIEM would."""

from __future__ import annotations

from parley.auth.v1.events_pb2 import SecurityEventRecorded

from parley_core.envelope import decode
from parley_core.testing.nats import NatsTestServer

__all__ = ["security_events"]


async def security_events(nats_server: NatsTestServer, kind: str) -> list[SecurityEventRecorded]:
    """Every record of one kind (parley.sec.<kind>.>) written so far."""
    nc = await nats_server.connect("platform")
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
        await nc.close()
    return found
