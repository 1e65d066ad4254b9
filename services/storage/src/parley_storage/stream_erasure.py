"""An erasure reaches the event log: an erased user's events are securely deleted from JetStream.

Crypto-shredding makes the archive and backups unreadable, but JetStream still holds the
events as appended. After the shred, storage deletes from AUTH and MSG every event it sealed
under the user's keys (their account record and the messages and edits they wrote, also the
texts whose archive copy a redaction or retention removed, in case their own deletion from the
log (log_cleanup.py) has not run yet) with the stream's secure erase (the message is
overwritten on disk), and their parked copies too.

Before punching holes, a marker is appended on each subject that will lose events, so the
owners rebuild correctly from a stream with gaps: `MessagesErased` keeps the deleted message
numbers taken (messaging never numbers a new message below them) and `AccountErased` keeps the
username subject non-empty (the name stays taken; a registration expecting an empty subject is
refused). A deleted event is therefore never the newest on its subject, and the owners' append
guards (expected last subject sequence) keep working. Retention (`MessagesExpired`) and
redaction reuse the same mechanism and helpers (stream_log.py). Every step is idempotent; the
closing `UserDataErasedFromStreams` record on STORE says it finished, and storage resumes an
erasure without it at start.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from google.protobuf.message import Message
from nats.js import JetStreamContext
from parley.auth.v1.events_pb2 import AccountErased
from parley.messaging.v1.events_pb2 import MessagePosted, MessagesErased
from parley.storage.v1.events_pb2 import UserDataErasedFromStreams

from parley_core.bus import EventBus
from parley_core.envelope import NewEvent, decode, open_payload
from parley_core.topology import CONSUMERS, channel_subject, privacy_subject
from parley_storage.archive import LoggedEvent, SqlEventArchive
from parley_storage.stream_log import (
    append_after_last,
    delete_parked_copies,
    marker_event_id,
    read_if_present,
    secure_delete,
)

log = logging.getLogger(__name__)

SOURCE_STREAMS = ("AUTH", "MSG")  # where the user's own events were appended (PARKED holds copies)
USERNAME_PREFIX = "parley.auth.username."
CATCH_UP_TIMEOUT_S = 30.0


class StreamErasureIncomplete(Exception):
    """The deletion could not finish now; it is resumable (retry, or it resumes at start)."""


async def erase_from_streams(bus: EventBus, archive: SqlEventArchive, user_id: str) -> int:
    """Delete the user's events from the log; returns how many were deleted (0 on a repeat)."""
    await _archive_caught_up(bus.js, SOURCE_STREAMS)  # so the archive knows every event of theirs
    return await remove_from_log(bus, archive, user_id)


async def remove_from_log(bus: EventBus, archive: SqlEventArchive, user_id: str) -> int:
    """The markers, the deletions and the closing record, once the archive holds every event of
    the user's (also what a re-seed runs for an erasure the restored backup predates)."""
    logged = await archive.events_of(user_id, SOURCE_STREAMS)
    numbers = await archive.message_numbers(logged)
    for subject, marker in await _markers(bus.js, user_id, logged, numbers):
        await append_after_last(bus, subject, marker)
    doomed = {(e.stream, e.stream_seq) for e in logged}
    deleted = 0
    for stream, seq in sorted(doomed):
        deleted += await secure_delete(bus.js, stream, seq)
    deleted += await delete_parked_copies(bus.js, doomed)
    done = NewEvent(
        aggregate_type="privacy",
        aggregate_id=user_id,
        payload=UserDataErasedFromStreams(user_id=user_id, events_deleted=deleted),
        actor="service:storage",
        event_id=f"erased-from-streams-{user_id}",
    )
    await append_after_last(bus, privacy_subject(user_id), done)
    log.info("erasure reached the event log", extra={"user_id": user_id, "deleted": deleted})
    return deleted


async def _markers(
    js: JetStreamContext, user_id: str, logged: Iterable[LoggedEvent], numbers: Mapping[tuple[str, int], int]
) -> list[tuple[str, NewEvent]]:
    """One marker per username subject and per channel that is about to lose events."""
    channels: defaultdict[str, set[int]] = defaultdict(set)
    usernames: set[str] = set()
    for e in logged:
        if e.stream == "MSG" and e.subject == channel_subject(e.aggregate_id):
            channels[e.aggregate_id].update(await _post_number(js, e))
            if (number := numbers.get((e.stream, e.stream_seq))) is not None:  # a hole in a re-seeded log
                channels[e.aggregate_id].add(number)
        elif e.stream == "AUTH" and e.subject.startswith(USERNAME_PREFIX):
            usernames.add(e.subject)
    markers: list[tuple[str, NewEvent]] = []
    for channel_id, seqs in sorted(channels.items()):
        payload: Message = MessagesErased(channel_id=channel_id, user_id=user_id, channel_seqs=sorted(seqs))
        markers.append((channel_subject(channel_id), erasure_marker("channel", channel_id, payload, user_id)))
    for subject in sorted(usernames):
        key = subject.removeprefix(USERNAME_PREFIX)
        markers.append((subject, erasure_marker("username", key, AccountErased(user_id=user_id), user_id)))
    return markers


async def _post_number(js: JetStreamContext, event: LoggedEvent) -> list[int]:
    """A post's number, read from the stream itself: its archive copy may be shredded or removed."""
    raw = await read_if_present(js, event.stream, event.stream_seq)
    if raw is None:
        return []  # deleted by an earlier run of this erasure (after its marker), or as a removed text
    payload = open_payload(decode(raw.data or b""))
    return [payload.channel_seq] if isinstance(payload, MessagePosted) else []


def erasure_marker(aggregate_type: str, aggregate_id: str, payload: Message, user_id: str) -> NewEvent:
    return NewEvent(
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        payload=payload,
        actor="service:storage",
        event_id=marker_event_id("erased", user_id, aggregate_type, aggregate_id),
    )


async def _archive_caught_up(js: JetStreamContext, streams: Sequence[str]) -> None:
    """Wait until the archive consumers have acknowledged every event that exists now."""
    deadline = asyncio.get_running_loop().time() + CATCH_UP_TIMEOUT_S
    for spec in CONSUMERS:
        if spec.service != "storage" or spec.stream not in streams:
            continue
        target = int((await js.stream_info(spec.stream)).state.last_seq or 0)
        delay = 0.05
        while True:
            info = await js.consumer_info(spec.stream, spec.durable)
            floor = int(info.ack_floor.stream_seq if info.ack_floor else 0)
            if floor >= target or not (info.num_pending or info.num_ack_pending):
                break
            if asyncio.get_running_loop().time() > deadline:
                raise StreamErasureIncomplete(f"the archive is behind on {spec.stream}; the erasure will be retried")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
