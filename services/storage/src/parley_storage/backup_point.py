"""The point a backup guarantees: every event JetStream had acknowledged when the backup began.

The archive trails the bus, so a snapshot taken at once could miss events already acknowledged
to senders. With the platform running, the backup first reads each stream's extent from
JetStream (as the operator's platform user) and waits until the archive holds all of it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from sqlalchemy import Engine, func, select

from parley_core.nats_connect import ONE_SHOT_CONNECT_S, NatsUnreachable, connect_nats_once
from parley_core.platform_state import STATE_FILE, process_alive
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


class PointUnreadable(Exception):
    """The platform runs, but the backup point cannot be read from its JetStream."""


def _platform_password(data_dir: Path) -> str:
    path = data_dir / "secrets" / "nats-passwords.json"
    try:
        return str(json.loads(path.read_text())[PLATFORM_USER])
    except OSError as exc:
        raise PointUnreadable(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError):
        raise PointUnreadable(f"{path} holds no NATS password of {PLATFORM_USER}") from None


async def read_point(
    data_dir: Path, *, note: Callable[[str], None], connect_timeout_s: float = ONE_SHOT_CONNECT_S
) -> dict[str, StreamExtent] | None:
    """Each archived stream's extent now, or None when no platform runs from this data folder.

    A stopped platform (platform.json says so after a clean stop) has no point to wait for: the
    archive is all there is. A platform.json still saying "running" after a crash names a NATS
    that is gone, so the connect is bounded; it is taken for stale only when the `parley up`
    that wrote it is gone too, since a backup of a running platform must not miss acknowledged
    events. ``note`` tells the operator which of these it found.
    """
    state_file = data_dir / STATE_FILE
    if not state_file.exists():
        note(f"no platform.json in {data_dir}: backing up the archive as it is")
        return None
    try:
        state = json.loads(state_file.read_text())
    except ValueError as exc:
        raise PointUnreadable(f"{state_file} is not JSON ({exc})") from None
    if not state.get("running"):
        note("the platform is stopped: backing up the archive as it is (no event log to wait for)")
        return None
    ca_cert = data_dir / "pki" / "ca.crt"
    if not ca_cert.is_file():
        raise PointUnreadable(f"platform.json says the platform runs, but its CA certificate {ca_cert} is missing")
    try:
        nc = await connect_nats_once(
            url=state["nats_url"],
            user=PLATFORM_USER,
            password=_platform_password(data_dir),
            ca_cert=ca_cert,
            name="parley-backup",
            timeout_s=connect_timeout_s,
        )
    except NatsUnreachable as exc:
        if process_alive(state.get("pid")):
            raise PointUnreadable(
                f"the platform runs (`parley up`, pid {state['pid']}), but {exc}; its backup point cannot be "
                "read: try again, or stop the platform for a backup of the archive as it is"
            ) from None
        note(f"platform.json is stale (its `parley up` is gone and {exc}): backing up the archive as it is")
        return None
    except (OSError, NatsError, KeyError) as exc:  # a NATS that answers and refuses us, a bad platform.json
        raise PointUnreadable(f"cannot read the backup point from the platform's NATS: {exc!r}") from None
    try:
        return await stream_point(nc.jetstream())
    except (NatsError, TimeoutError) as exc:
        raise PointUnreadable(f"cannot read the backup point from the platform's JetStream: {exc!r}") from None
    finally:
        await nc.close()


async def stream_point(js: JetStreamContext) -> dict[str, StreamExtent]:
    """Each archived stream's extent now, read as the platform user."""
    point = {}
    for spec in CONSUMERS:
        if spec.service == "storage":
            try:
                info = await js.stream_info(spec.stream)
            except NotFoundError:  # not declared yet: no event on it to wait for
                continue
            point[spec.stream] = StreamExtent(
                int(info.state.first_seq or 0), int(info.state.last_seq or 0), int(info.state.messages or 0)
            )
    return point


def wait_until_archived(
    engine: Engine, point: dict[str, StreamExtent], *, timeout_s: float, note: Callable[[str], None]
) -> None:
    """Return once the archive holds every event of ``point``; ``note`` hears once that it waits."""
    deadline = time.monotonic() + timeout_s
    waiting = False
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
        if not waiting:
            waiting = True
            note(f"waiting up to {timeout_s:g} s for the archive to hold the backup point (still missing: {missing})")
        if time.monotonic() > deadline:
            raise ArchiveBehind(
                f"after {timeout_s:.0f}s the archive still lacks events up to the backup point: {missing}"
            )
        time.sleep(POLL_S)


def read_point_sync(data_dir: Path, *, note: Callable[[str], None]) -> dict[str, StreamExtent] | None:
    return asyncio.run(read_point(data_dir, note=note))
