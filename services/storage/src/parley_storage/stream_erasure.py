"""An erasure reaches the event log: an erased user's events are securely deleted from JetStream.

Crypto-shredding makes the archive and backups unreadable, but JetStream still holds the
events as appended. After the shred, every event storage sealed under the user's keys (their
account record and the messages and edits they wrote, also the texts whose archive copy a
redaction or retention removed, in case their own deletion from the log (log_cleanup.py) has not
run yet) leaves AUTH and MSG by the stream's secure erase (the message is overwritten on disk),
and their parked copies too. Storage may not delete on AUTH or MSG: it records `LogDeletionDue`
for each owner, who checks that every event named is the erased user's own (auth only once it
tombstoned the account on a request it recorded itself, messaging only once that tombstone is
in its access view) and deletes it (parley_core.log_deletion); storage waits until they are gone.

Before holes are punched, the owner of each subject that will lose events appends a marker
there, so the owners rebuild correctly from a stream with gaps: `MessagesErased` (messaging)
keeps the deleted message numbers taken (messaging never numbers a new message below them) and
`AccountErased` (auth) keeps the username subject non-empty (the name stays taken; a
registration expecting an empty subject is refused). Storage writes to neither stream: it records
what is due on its own STORE stream (`ChannelErasureDue`, `AccountErasureDue`, on
parley.storage.due.<owner>.erasure.<user id>), each owner appends its marker with the id
parley_core.markers derives, and storage asks for the deletions only once the archive holds every one of them.
A deleted event is therefore never the newest on its subject, and the owners' append guards
(expected last subject sequence) keep working. Retention (`MessagesExpired`) and redaction follow
the same rule. Every step is idempotent; the closing `UserDataErasedFromStreams` record on STORE
says it finished, and storage resumes an erasure without it (at start, and again until it ends:
an owner may be down for a while).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from nats.js import JetStreamContext
from parley.messaging.v1.events_pb2 import MessagePosted

from parley_core.bus import EventBus
from parley_core.envelope import NewEvent, decode, open_payload
from parley_core.jobs import Pause, every, sleeping
from parley_core.log_deletion import ERASURE
from parley_core.markers import Marker
from parley_core.topology import CONSUMERS, channel_subject
from parley_storage import codec
from parley_storage.archive import LoggedEvent, SqlEventArchive
from parley_storage.domain import ErasureDue, decide_erased_from_streams, decide_erasure_markers, owner_of
from parley_storage.store_log import STORAGE, record
from parley_storage.stream_log import (
    DeletionsPending,
    delete_parked_copies,
    read_if_present,
    request_deletions,
    until_deleted,
)

log = logging.getLogger(__name__)

SOURCE_STREAMS = ("AUTH", "MSG")  # where the user's own events were appended (PARKED holds copies)
USERNAME_PREFIX = "parley.auth.username."
CATCH_UP_TIMEOUT_S = 30.0
# How long an erasure waits for the owners' markers (they react to the due facts within moments
# while they run); then it is left to resume.
MARKERS_TIMEOUT_S = 30.0
# An erasure left unfinished at start is tried again this long after a round that left it
# (doubling, up to the most): the owners that must mark it may still be starting, or down.
RESUME_PAUSE_FIRST_S = 1.0
RESUME_PAUSE_MAX_S = 60.0


class StreamErasureIncomplete(Exception):
    """The deletion could not finish now; it is resumable (retry, or it resumes at start)."""


class UnfinishedErasures:
    """Erasures that shredded the keys but had not yet deleted the events from JetStream (cut
    short, or handed over by a re-seed), finished by a periodic job: each round tries every one
    left, the pause after a round that left some doubles, and the job ends itself once none is."""

    def __init__(
        self, erase: Callable[[str], Awaitable[object]], user_ids: Iterable[str], *, pause: Pause = sleeping
    ) -> None:
        self._erase = erase  # erase_from_streams for one user
        self.left = list(user_ids)
        self._pause_s = RESUME_PAUSE_FIRST_S
        # Resumable, so cut short at stop (grace 0): the next start finishes it.
        self.job = every(self._next_pause, self._round, name="resume-erasures", grace=0.0, pause=pause)

    async def _round(self) -> None:
        for user_id in list(self.left):
            try:
                await self._erase(user_id)
            except Exception:  # left unfinished: tried again next round (and at the next start)
                log.warning("resuming an erasure in the event log failed", extra={"user_id": user_id}, exc_info=True)
            else:
                self.left.remove(user_id)
        if not self.left:
            self.job.stop_soon()

    def _next_pause(self) -> float:
        pause, self._pause_s = self._pause_s, min(self._pause_s * 2, RESUME_PAUSE_MAX_S)
        return pause


@dataclass(frozen=True)
class DueMarker:
    """A marker an owner must append before storage deletes, and the fact on STORE that asks for it."""

    owner: str
    marker: Marker
    subject: str  # of the fact
    fact: NewEvent

    @classmethod
    def of(cls, due: ErasureDue) -> DueMarker:
        return cls(owner_of(due), due.marker, codec.subject_of(due), codec.new_event(due, STORAGE))


async def erase_from_streams(
    bus: EventBus, archive: SqlEventArchive, user_id: str, *, markers_timeout: float = MARKERS_TIMEOUT_S
) -> int:
    """Delete the user's events from the log; returns how many were deleted (0 on a repeat)."""
    await _archive_caught_up(bus.js, SOURCE_STREAMS)  # so the archive knows every event of theirs
    return await remove_from_log(bus, archive, user_id, markers_timeout=markers_timeout)


async def request_markers(bus: EventBus, archive: SqlEventArchive, user_id: str) -> list[DueMarker]:
    """Record on STORE the markers the owners must append before the user's events leave the log
    (those the archive does not hold yet); returns every marker the erasure needs. All a re-seed
    does for an erasure its backup predates: the owners mark before they serve, storage deletes."""
    due, _ = await _request_markers(bus, archive, user_id)
    return due


async def _request_markers(
    bus: EventBus, archive: SqlEventArchive, user_id: str
) -> tuple[list[DueMarker], list[LoggedEvent]]:
    logged = await archive.events_of(user_id, SOURCE_STREAMS)
    due = await _due_markers(bus.js, user_id, logged, await archive.message_numbers(logged))
    held = await archive.holds_markers([d.marker for d in due])
    for d in due:
        if d.marker not in held:
            await bus.append_after_last(d.subject, d.fact)
    return due, logged


async def remove_from_log(
    bus: EventBus, archive: SqlEventArchive, user_id: str, *, markers_timeout: float = MARKERS_TIMEOUT_S
) -> int:
    """The due facts, the owners' markers, the deletions and the closing record, once the archive
    holds every event of the user's."""
    due, logged = await _request_markers(bus, archive, user_id)
    await _until_marked(archive, due, markers_timeout)
    doomed = {(e.stream, e.stream_seq) for e in logged}
    deleted = 0
    for stream in SOURCE_STREAMS:
        refs = [(e.stream_seq, e.event_id) for e in logged if e.stream == stream]
        asked = await request_deletions(bus, stream, ERASURE, refs, user_id=user_id)
        try:
            await until_deleted(bus.js, stream, [seq for seq, _ in asked], markers_timeout)
        except DeletionsPending as exc:
            raise StreamErasureIncomplete(f"{exc}; the erasure will be retried") from None
        deleted += len(asked)
    deleted += await delete_parked_copies(bus.js, doomed)
    done, _ = decide_erased_from_streams(user_id, deleted)
    await record(bus, done)
    log.info("erasure reached the event log", extra={"user_id": user_id, "deleted": deleted})
    return deleted


async def _until_marked(archive: SqlEventArchive, due: Sequence[DueMarker], timeout: float) -> None:
    """Wait until the archive holds every marker, whichever storage instance archives it."""
    loop = asyncio.get_running_loop()
    deadline, delay = loop.time() + timeout, 0.02
    while True:
        held = await archive.holds_markers([d.marker for d in due])
        if not (missing := [d for d in due if d.marker not in held]):
            return
        if loop.time() > deadline:
            owners = ", ".join(sorted({d.owner for d in missing}))
            raise StreamErasureIncomplete(
                f"{len(missing)} marker(s) not appended yet by {owners} (is it running?); the erasure will be retried"
            )
        await asyncio.sleep(delay)  # the archive is polled: the markers arrive through another consumer
        delay = min(delay * 2, 0.5)


async def _due_markers(
    js: JetStreamContext, user_id: str, logged: Iterable[LoggedEvent], numbers: Mapping[tuple[str, int], int]
) -> list[DueMarker]:
    """One marker per username subject and per channel that is about to lose events."""
    channels: defaultdict[str, set[int]] = defaultdict(set)
    usernames: set[str] = set()
    for e in logged:
        if e.stream == "MSG" and e.subject == channel_subject(e.aggregate_id):
            channels[e.aggregate_id].update(await _post_number(js, e))
            if (number := numbers.get((e.stream, e.stream_seq))) is not None:  # a hole in a re-seeded log
                channels[e.aggregate_id].add(number)
        elif e.stream == "AUTH" and e.subject.startswith(USERNAME_PREFIX):
            usernames.add(e.subject.removeprefix(USERNAME_PREFIX))
    return [DueMarker.of(due) for due in decide_erasure_markers(user_id, channels, usernames)]


async def _post_number(js: JetStreamContext, event: LoggedEvent) -> list[int]:
    """A post's number, read from the stream itself: its archive copy may be shredded or removed."""
    raw = await read_if_present(js, event.stream, event.stream_seq)
    if raw is None:
        return []  # deleted by an earlier run of this erasure (after its marker), or as a removed text
    payload = open_payload(decode(raw.data or b""))
    return [payload.channel_seq] if isinstance(payload, MessagePosted) else []


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
