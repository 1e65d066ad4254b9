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
    archived_seq: int
    events_behind: int
    seconds_behind: float


async def measure_lag(js: JetStreamContext, archive: SqlEventArchive) -> list[StreamLag]:
    """Compare each stream's last sequence with the archived position committed in SQL.

    Seconds behind is the age of the oldest event not yet archived (the next one after the
    position), so a quiet stream that is caught up reads 0 however old its last event is.
    """
    archived = {p.consumer: p.last_seq for p in await archive.consumer_progress()}
    out = []
    for spec in CONSUMERS:
        if spec.service != "storage":
            continue
        info = await js.stream_info(spec.stream)
        last = int(info.state.last_seq or 0)
        done = archived.get(spec.durable, 0)
        behind = max(0, last - done)
        seconds = 0.0
        if behind:
            first = max(done + 1, int(info.state.first_seq or 0))
            try:
                oldest = await js.get_msg(spec.stream, seq=first)
            except nats.js.errors.NotFoundError:
                oldest = None
            if oldest is not None and oldest.data is not None:
                occurred = decode(oldest.data).occurred_at.ToNanoseconds()
                seconds = max(0.0, (time.time_ns() - occurred) / 1e9)
        out.append(StreamLag(spec.stream, spec.durable, last, done, behind, seconds))
    return out
