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
from dataclasses import dataclass, field, replace
from pathlib import Path

from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from sqlalchemy import Connection, Engine, func, select

from parley_core.bus import FOREIGN_EVENT
from parley_core.nats_connect import ONE_SHOT_CONNECT_S, NatsUnreachable, connect_nats_once
from parley_core.platform_state import STATE_FILE, process_alive
from parley_core.topology import CONSUMERS, PLATFORM_USER, parked_subject
from parley_storage.archive.db import chunks
from parley_storage.schema import events

POLL_S = 0.1
PARKED = "PARKED"
PARKED_BATCH = 500
PARKED_FETCH_S = 2.0


@dataclass(frozen=True)
class StreamExtent:
    first_seq: int
    last_seq: int
    messages: int
    # The extent's events storage's archive consumer parked instead of archiving (their copies on
    # PARKED): consumed for good and never archived, so they need no wait.
    parked: frozenset[int] = field(default=frozenset(), repr=False)

    def recorded(self) -> dict[str, int]:
        """The point as the backup's manifest states it."""
        return {"first_seq": self.first_seq, "last_seq": self.last_seq, "messages": self.messages}


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
    parked = await _parked_by_archive(js, point)
    return {stream: replace(extent, parked=frozenset(parked[stream])) for stream, extent in point.items()}


async def _parked_by_archive(js: JetStreamContext, point: dict[str, StreamExtent]) -> dict[str, set[int]]:
    """The original sequences, within ``point``, of the events storage parked instead of archiving:
    copies on its own subtree of PARKED (which only storage may write) by its archive consumer,
    or of an event its stream's owner never writes, which no consumer of storage ever hands over
    (parked once, by whichever of them met it first)."""
    found: dict[str, set[int]] = {stream: set() for stream in point}
    archive_consumers = {spec.durable for spec in CONSUMERS if spec.service == "storage"}
    try:
        if not (await js.stream_info(PARKED)).state.messages:
            return found
    except NotFoundError:
        return found
    config = ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0)
    reader = await js.pull_subscribe(parked_subject("storage", ">"), stream=PARKED, config=config)
    try:
        pending = (await reader.consumer_info()).num_pending or 0
        while pending:
            try:
                batch = await reader.fetch(PARKED_BATCH, timeout=PARKED_FETCH_S)
            except NatsTimeout:
                break  # removed by an operator since the count
            for msg in batch:
                pending = msg.metadata.num_pending or 0
                if (original := _passed_for_good(msg.headers or {}, point, archive_consumers)) is not None:
                    found[original[0]].add(original[1])
    finally:
        await reader.unsubscribe()
    return found


def _passed_for_good(
    headers: dict[str, str], point: dict[str, StreamExtent], archive_consumers: set[str]
) -> tuple[str, int] | None:
    """The stream and sequence of a parked copy's original, when it lies within ``point`` and no
    archive consumer of storage will ever archive it."""
    stream, seq = headers.get("Parley-Original-Stream", ""), headers.get("Parley-Original-Sequence", "")
    extent = point.get(stream)
    if extent is None or not seq.isdigit() or not extent.first_seq <= int(seq) <= extent.last_seq:
        return None
    by_archive = headers.get("Parley-Consumer") in archive_consumers
    return (stream, int(seq)) if by_archive or headers.get("Parley-Parked-Kind") == FOREIGN_EVENT else None


def wait_until_archived(
    engine: Engine, point: dict[str, StreamExtent], *, timeout_s: float, note: Callable[[str], None]
) -> None:
    """Return once the archive holds every event of ``point`` but the parked ones; ``note`` hears
    once that it waits."""
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
                have += _parked_not_archived(conn, stream, extent.parked)
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


def _parked_not_archived(conn: Connection, stream: str, parked: frozenset[int]) -> int:
    """How many parked events the archive does not hold (one may have been archived before a
    redelivery was parked): each is covered once, by its row or by its parked copy."""
    archived = 0
    for chunk in chunks(sorted(parked)):
        query = select(func.count()).where(events.c.stream == stream, events.c.stream_seq.in_(chunk))
        archived += int(conn.execute(query).scalar_one())
    return len(parked) - archived


def read_point_sync(data_dir: Path, *, note: Callable[[str], None]) -> dict[str, StreamExtent] | None:
    return asyncio.run(read_point(data_dir, note=note))
