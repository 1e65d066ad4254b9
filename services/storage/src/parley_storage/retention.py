"""Retention as events: storage decides which messages expired and says so on the channel.

A channel's policy keeps its messages N days. The retention job (and SetRetentionPolicy, at
once) finds the channel's messages in history sent before that and appends `MessagesExpired`
markers on the channel's subject, at most MARKER_SEQS numbers each, with the same append guard
as the channel's owner. Each reader applies the marker: messaging forgets the messages (their
numbers stay taken), the archive blanks every text of them (posts and edits), takes them out of
history and queues those texts for secure deletion from the log (log_cleanup.py). The marker
comes after every text it removes, so none of them is ever the newest event on the subject.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from parley.messaging.v1.events_pb2 import MessagesExpired

from parley_core.bus import EventBus
from parley_core.envelope import NewEvent
from parley_core.topology import channel_subject
from parley_storage.archive import NS_PER_DAY, RetentionPolicy, SqlEventArchive
from parley_storage.progress import ArchiveProgress
from parley_storage.stream_log import append_after_last, marker_event_id

MARKER_SEQS = 500  # message numbers per marker: a long run is several events, none of them large
STREAM = "MSG"


class ArchiveBehind(Exception):
    """The archive did not reach the channel's newest event, or the markers, in time: retry later."""


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
        await self._until_archived([newest], timeout)
        expired = await self._archive.sent_before(policy.channel_id, now_ns - policy.days * NS_PER_DAY)
        appended = [await append_after_last(self._bus, subject, marker) for marker in expiry_markers(policy, expired)]
        if appended:
            await self._until_archived(appended, timeout)
        return len(expired)

    async def _until_archived(self, stream_seqs: Sequence[int], timeout: float) -> None:
        """Wait until the archive holds these MSG events, whichever storage instance archives them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        target, delay = max(stream_seqs), 0.02
        while not await self._archive.holds(STREAM, stream_seqs):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ArchiveBehind(f"the archive has not reached stream {STREAM} sequence {target} yet")
            if self._progress.archived(STREAM) < target:
                # Wakes as soon as this instance archives it; another instance's work is polled.
                await self._progress.wait_for(STREAM, target, timeout=min(delay, remaining))
            else:
                await asyncio.sleep(min(delay, remaining))  # past it here, but it was retried: on its way
            delay = min(delay * 2, 0.5)


def expiry_markers(policy: RetentionPolicy, channel_seqs: Sequence[int]) -> list[NewEvent]:
    """The markers for these numbers, MARKER_SEQS a marker. Each id comes from its numbers: a run
    retried inside the stream's duplicate window appends no second marker for the same messages."""
    markers = []
    for start in range(0, len(channel_seqs), MARKER_SEQS):
        chunk = list(channel_seqs[start : start + MARKER_SEQS])
        payload = MessagesExpired(channel_id=policy.channel_id, channel_seqs=chunk, retention_days=policy.days)
        markers.append(
            NewEvent(
                aggregate_type="channel",
                aggregate_id=policy.channel_id,
                payload=payload,
                actor="service:storage",
                event_id=marker_event_id("expired", policy.channel_id, ",".join(map(str, chunk))),
            )
        )
    return markers
