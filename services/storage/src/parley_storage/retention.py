"""Retention as events: storage decides which messages expired, messaging marks them on the channel.

A channel's policy keeps its messages N days. It is messaging's record (ChannelRetentionSet on
the channel, set by the operator through messaging's SetChannelRetention), which the archive
copies into its retention_policies table as it archives MSG; messaging checks every fact below
against its own record, so storage's word sets no policy. The retention job (and
SetRetentionPolicy, at once) finds the channel's messages in history sent before that and
records `RetentionDue` facts (domain.decide_expiry) on its own STORE stream
(parley.storage.due.messaging.expiry.<channel id>), at most MARKER_SEQS numbers each.
Messaging, the channel's owner, checks them against its own projection and appends the
`MessagesExpired` marker on the channel's subject (with the id parley_core.markers derives).
Each reader applies the marker: messaging forgets the messages (their numbers stay taken), the
archive blanks every text of them (posts and edits), takes them out of history and queues those
texts for secure deletion from the log (log_cleanup.py). The marker comes after every text it
removes, so none of them is ever the newest event on the subject.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from nats.js.errors import NotFoundError

from parley_core.bus import EventBus
from parley_core.envelope import NewEvent
from parley_core.markers import Marker
from parley_core.topology import CONSUMERS, channel_subject
from parley_storage import codec, domain
from parley_storage.archive import RetentionPolicy, SqlEventArchive
from parley_storage.progress import ArchiveProgress
from parley_storage.store_log import STORAGE, record

MARKER_SEQS = domain.MARKER_SEQS
STREAM = "MSG"
(ARCHIVE_CONSUMER,) = (c.durable for c in CONSUMERS if c.service == "storage" and c.stream == STREAM)


class ArchiveBehind(Exception):
    """The archive did not reach the channel's newest event, or messaging's markers, in time: retry later."""


class Retention:
    def __init__(self, bus: EventBus, archive: SqlEventArchive, progress: ArchiveProgress) -> None:
        self._bus = bus
        self._archive = archive
        self._progress = progress
        self._lock = asyncio.Lock()  # the job and SetRetentionPolicy decide one at a time

    async def apply(self, *, now_ns: int, timeout: float, channel_id: str | None = None) -> int:
        """Expire what every policy (or one channel's) says is due at ``now_ns``; returns how many
        messages left history. Returns once the archive has applied the markers."""
        async with self._lock:
            removed = 0
            for policy in await self._archive.retention_policies(channel_id):
                removed += await self._expire(policy, now_ns=now_ns, timeout=timeout)
            return removed

    async def _expire(self, policy: RetentionPolicy, *, now_ns: int, timeout: float) -> int:
        subject = channel_subject(policy.channel_id)
        newest = await self._bus.last_subject_seq(STREAM, subject)
        if not newest:
            return 0  # no such channel in the log (yet)
        # A marker appended by an earlier (interrupted) run is applied before deciding, so a
        # retried run finds those messages gone and marks nothing twice.
        await self.until_archived([newest], timeout)
        cutoff = domain.expiry_cutoff(policy.days, now_ns)
        expired = await self._archive.sent_before(policy.channel_id, cutoff)
        due = domain.decide_expiry(policy.channel_id, policy.days, expired, sent_before_ns=cutoff)
        await record(self._bus, due)
        await self._until_marked([fact.marker for fact in due], timeout)
        return len(expired)

    async def _until_marked(self, markers: Sequence[Marker], timeout: float) -> None:
        """Wait until the archive holds messaging's markers (and so has applied them)."""
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + timeout, 0.02
        while len(await self._archive.holds_markers(markers)) < len(set(markers)):
            if loop.time() > deadline:
                raise ArchiveBehind("messaging has not marked the expired messages yet (is it running?)")
            await asyncio.sleep(delay)  # the archive is polled: the markers arrive through its consumer
            delay = min(delay * 2, 0.5)

    async def until_archived(self, stream_seqs: Sequence[int], timeout: float) -> None:
        """Wait until the archive holds these MSG events, whichever storage instance archives them,
        or has passed them for good: one it parked is never archived, and waiting for it would
        postpone its channel's retention forever."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        target, delay = max(stream_seqs), 0.02
        while not await self._archive.holds(STREAM, stream_seqs) and not await self._consumed(target):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ArchiveBehind(f"the archive has not reached stream {STREAM} sequence {target} yet")
            if self._progress.archived(STREAM) < target:
                # Wakes as soon as this instance archives it; another instance's work is polled.
                await self._progress.wait_for(STREAM, target, timeout=min(delay, remaining))
            else:
                await asyncio.sleep(min(delay, remaining))  # past it here, but it was retried: on its way
            delay = min(delay * 2, 0.5)

    async def _consumed(self, seq: int) -> bool:
        """Whether the archive consumer's ack floor is at ``seq``: everything up to it is archived
        or parked (acknowledged only after its commit, or terminated once parked). Not the SQL
        position, which may be past an event a failed batch left to a delayed redelivery. Asked
        of JetStream, since another storage instance may have parked it."""
        try:
            info = await self._bus.js.consumer_info(STREAM, ARCHIVE_CONSUMER)
        except NotFoundError:
            return False
        return int(info.ack_floor.stream_seq if info.ack_floor else 0) >= seq


def expiry_facts(
    policy: RetentionPolicy, channel_seqs: Sequence[int], *, sent_before_ns: int
) -> list[tuple[Marker, NewEvent]]:
    """The events recording these numbers as expired (domain.decide_expiry), each with the marker it asks for."""
    due = domain.decide_expiry(policy.channel_id, policy.days, channel_seqs, sent_before_ns=sent_before_ns)
    return [(fact.marker, codec.new_event(fact, STORAGE)) for fact in due]
