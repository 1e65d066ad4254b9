"""Storage's archive consumers: each stream's events into the archive, exactly once, and the
position every history read waits on moved past them, a parked event's too."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial

from sqlalchemy.exc import InterfaceError, OperationalError

from parley_core.bus import ConsumerLoss, EventBus, ReceivedEvent, RetryLater
from parley_core.topology import CONSUMERS, ConsumerSpec
from parley_storage.archive import SqlEventArchive
from parley_storage.detector import AnomalyDetector
from parley_storage.progress import ArchiveProgress

log = logging.getLogger(__name__)
# Errors that mean the database cannot be reached or used right now (connection refused or
# lost, SQLite busy); the data and the request are fine, so the caller should retry.
DATABASE_DOWN = (OperationalError, InterfaceError)


class ArchiveConsumers:
    """The handlers of storage's durable consumers (topology.CONSUMERS), one per stream."""

    def __init__(self, archive: SqlEventArchive, progress: ArchiveProgress) -> None:
        self._archive = archive
        self._progress = progress
        # Set once it starts: it reads MSG as archived here rather than with a consumer of its own.
        self.detector: AnomalyDetector | None = None

    async def follow(self, bus: EventBus, *, linger_s: float, on_loss: ConsumerLoss) -> None:
        for spec in CONSUMERS:
            if spec.service == "storage":
                await bus.consume(
                    spec,
                    partial(self.archive, spec),
                    linger_s=linger_s,
                    on_loss=on_loss,
                    on_parked=partial(self.pass_parked, spec),
                )

    async def archive(self, spec: ConsumerSpec, batch: Sequence[ReceivedEvent]) -> None:
        try:
            await self._archive.archive(spec.durable, batch)
        except DATABASE_DOWN as exc:
            # The database, not the events, is at fault: hold the batch instead of parking it.
            raise RetryLater(f"archive database unavailable: {exc.__class__.__name__}") from exc
        await self._progress.advance(spec.stream, max(event.stream_seq for event in batch))
        if spec.stream == "MSG" and self.detector is not None:
            self.detector.messages.archived(batch)  # the detector's MSG, read once (handed_over)

    async def pass_parked(self, spec: ConsumerSpec, seq: int) -> None:
        """A parked event is consumed: reads waiting for it (its channel's newest) go on."""
        try:
            await self._archive.pass_parked(spec.durable, spec.stream, seq)
        except DATABASE_DOWN:  # the next archived batch records a position past it
            log.warning("recording the position past a parked event failed", extra={"seq": seq}, exc_info=True)
        await self._progress.advance(spec.stream, seq)
