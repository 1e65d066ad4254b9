"""No message number is taken twice, even after someone deleted a channel's newest events from MSG.

Messaging numbers a channel's messages from its projection, rebuilt from MSG. Erasure, retention
and redaction delete events from the middle of a channel's subject, never its newest (storage_due
checks that), so the newest event left carries the channel's highest version and number. Whoever
holds messaging's NATS credential can delete the newest too; an instance rebuilt from that log
would give the next message the deleted one's number (and the archive, which keeps one message
per number, would never show it).

So before this instance first changes a channel, it asks storage's archive (which archives an
event within moments of its append) for the channel's events after the version it holds. Any it
finds were deleted from the subject's tail: it logs `security_event: event_log_gap` naming their
stream sequences, and keeps their numbers and version taken (the append guard stays the newest
event the log still holds). Should the archive not answer (storage down, or no address given),
the change goes ahead unchecked, a send keeps working while the archive is down, and the next
change asks again.

Not seen: a deletion made before storage archived the event, or one while this instance runs
(its projection still holds the event: the channel's appends then fail their expected-sequence
check until it restarts, and nothing is numbered twice).
"""

from __future__ import annotations

import logging

import grpc
from parley.common.v1.envelope_pb2 import EventEnvelope
from parley.storage.v1 import storage_pb2, storage_pb2_grpc

from parley_core.envelope import UnknownEventType, open_payload
from parley_messaging.codec import from_proto
from parley_messaging.domain import Channel
from parley_messaging.fold import Recorded

log = logging.getLogger(__name__)
ARCHIVE_TIMEOUT_S = 2.0  # a send waits at most this long for the archive, once per channel
PAGE = 1000


class ArchivedTail:
    """Checks each channel once per instance against the archive (see the module's docstring)."""

    def __init__(self, archive: storage_pb2_grpc.StorageArchiveServiceAsyncStub | None) -> None:
        self._archive = archive
        self._checked: set[str] = set()
        self._warned: set[str] = set()  # channels whose check the archive did not answer: said once

    async def check(self, channel: Channel) -> None:
        if self._archive is None or channel.channel_id in self._checked:
            return
        try:
            lost = await self._newer_than(channel)
        except grpc.aio.AioRpcError as exc:
            if channel.channel_id not in self._warned:
                self._warned.add(channel.channel_id)
                log.warning(
                    "the archive did not answer; a channel's newest events are not checked yet",
                    extra={"channel_id": channel.channel_id, "code": exc.code().name},
                )
            return
        if lost:
            for envelope in lost.values():
                keep_taken(channel, envelope)
            log.error(
                "events at the end of a channel were deleted from the log; their numbers stay taken",
                extra={
                    "security_event": "event_log_gap",
                    "channel_id": channel.channel_id,
                    "lost_seqs": sorted(lost),
                },
            )
        self._checked.add(channel.channel_id)

    async def _newer_than(self, channel: Channel) -> dict[int, EventEnvelope]:
        """The archived events of the channel after the version this projection holds, by stream sequence."""
        assert self._archive is not None
        found: dict[int, EventEnvelope] = {}
        after = channel.version
        while True:
            request = storage_pb2.GetAggregateEventsRequest(
                aggregate_type="channel", aggregate_id=channel.channel_id, after_version=after, limit=PAGE
            )
            page = await self._archive.GetAggregateEvents(request, timeout=ARCHIVE_TIMEOUT_S)
            for archived in page.events:
                if archived.envelope:
                    found[archived.stream_seq] = EventEnvelope.FromString(archived.envelope)
                after = max(after, archived.aggregate_version)
            if not page.has_more or not page.events:
                return found


def keep_taken(channel: Channel, envelope: EventEnvelope) -> None:
    """A lost event, as the archive kept it, leaves its number and version taken (Channel.keep_taken)."""
    try:
        event = from_proto(open_payload(envelope))
    except UnknownEventType:
        event = None
    channel.keep_taken(event, Recorded(0, envelope.aggregate_version, envelope.event_id))
