"""The point a backup guarantees: every event JetStream had acknowledged when the backup began.

The archive trails the bus, so a snapshot taken at once could miss events already acknowledged
to senders. With the platform running, the backup first reads each stream's extent from
JetStream (as the operator's platform user) and waits until the archive holds all of it.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, func, select

from parley_core.nats_connect import connect_nats
from parley_core.natsconf import ensure_nats_passwords
from parley_core.topology import CONSUMERS, PLATFORM_USER
from parley_storage.schema import events

POLL_S = 0.1


@dataclass(frozen=True)
class StreamExtent:
    first_seq: int
    last_seq: int
    messages: int


class ArchiveBehind(Exception):
    """The archive did not reach the backup point in time (is the storage service running?)."""


async def read_point(data_dir: Path) -> dict[str, StreamExtent] | None:
    """Each archived stream's extent now, or None when no platform runs from this data folder."""
    state_file = data_dir / "platform.json"
    if not state_file.exists():
        return None
    state = json.loads(state_file.read_text())
    password = ensure_nats_passwords(data_dir / "secrets" / "nats-passwords.json", [PLATFORM_USER])[PLATFORM_USER]
    try:
        nc = await connect_nats(
            url=state["nats_url"],
            user=PLATFORM_USER,
            password=password,
            ca_cert=data_dir / "pki" / "ca.crt",
            name="parley-backup",
            allow_reconnect=False,
        )
    except Exception:  # a stale platform.json: nothing is running, the archive is all there is
        return None
    try:
        js = nc.jetstream()
        point = {}
        for spec in CONSUMERS:
            if spec.service == "storage":
                info = await js.stream_info(spec.stream)
                point[spec.stream] = StreamExtent(
                    int(info.state.first_seq or 0), int(info.state.last_seq or 0), int(info.state.messages or 0)
                )
        return point
    finally:
        await nc.close()


def wait_until_archived(engine: Engine, point: dict[str, StreamExtent], *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        missing = {}
        with engine.connect() as conn:
            for stream, extent in point.items():
                if extent.messages == 0:
                    continue
                have = conn.execute(
                    select(func.count())
                    .select_from(events)
                    .where(
                        events.c.stream == stream,
                        events.c.stream_seq >= extent.first_seq,
                        events.c.stream_seq <= extent.last_seq,
                    )
                ).scalar_one()
                if have < extent.messages:
                    missing[stream] = extent.messages - have
        if not missing:
            return
        if time.monotonic() > deadline:
            raise ArchiveBehind(
                f"after {timeout_s:.0f}s the archive still lacks events up to the backup point: {missing}"
            )
        time.sleep(POLL_S)


def read_point_sync(data_dir: Path) -> dict[str, StreamExtent] | None:
    return asyncio.run(read_point(data_dir))
