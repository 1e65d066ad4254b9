"""Archive lag: how far each archive consumer is behind its stream, in events and in seconds."""

from __future__ import annotations

import time
from dataclasses import dataclass

import nats.js.errors
from nats.js import JetStreamContext

from parley_core.envelope import decode
from parley_core.topology import CONSUMERS
from parley_storage.archive import SqlEventArchive


@dataclass(frozen=True)
class StreamLag:
    stream: str
    consumer: str
    stream_last_seq: int
    acked_seq: int  # everything up to here is archived (the consumer's ack floor)
    committed_seq: int  # highest sequence archived or parked, in SQL (holes below it may await redelivery)
    events_behind: int
    seconds_behind: float


async def measure_lag(js: JetStreamContext, archive: SqlEventArchive) -> list[StreamLag]:
    """JetStream's own account of each archive consumer: what is undelivered or unacknowledged.

    The consumer acknowledges only after the SQL commit, so its ack floor is the point up to
    which everything is archived, and pending plus unacknowledged counts every event not yet
    archived, including ones a killed instance had taken and will be redelivered. Seconds
    behind is the age of the oldest such event; a caught-up stream reads 0 however old its last
    event is. The SQL position (highest sequence committed) is reported beside it.
    """
    committed = {p.consumer: p.last_seq for p in await archive.consumer_progress()}
    out = []
    for spec in CONSUMERS:
        if spec.service != "storage":
            continue
        info = await js.stream_info(spec.stream)
        last = int(info.state.last_seq or 0)
        try:
            consumer = await js.consumer_info(spec.stream, spec.durable)
        except nats.js.errors.NotFoundError:  # not created yet: the whole stream is behind
            floor, behind = 0, int(info.state.messages or 0)
        else:
            floor = int(consumer.ack_floor.stream_seq if consumer.ack_floor else 0)
            behind = int(consumer.num_pending or 0) + int(consumer.num_ack_pending or 0)
        seconds = 0.0
        if behind:
            try:
                oldest = await js.get_msg(spec.stream, seq=max(floor + 1, int(info.state.first_seq or 1)))
            except nats.js.errors.NotFoundError:
                oldest = None
            if oldest is not None and oldest.data:
                occurred = decode(oldest.data).occurred_at.ToNanoseconds()
                seconds = max(0.0, (time.time_ns() - occurred) / 1e9)
        out.append(StreamLag(spec.stream, spec.durable, last, floor, committed.get(spec.durable, 0), behind, seconds))
    return out
