"""Auth's writes to the AUTH stream, each waited for until this instance's projection holds it
(read your writes): an append at the version a decision read, a marker after whatever a subject
holds, and catching up after a lost race before deciding again."""

from __future__ import annotations

import logging

import nats.errors

from parley_core.bus import ConcurrencyConflict, EventBus, Replay
from parley_core.envelope import NewEvent
from parley_core.errors import FailedPrecondition, Unavailable

log = logging.getLogger(__name__)


class AuthLog:
    def __init__(self, bus: EventBus, replay: Replay) -> None:
        self._bus = bus
        self._replay = replay

    async def append(self, subject: str, event: NewEvent, *, version: int, expected_seq: int | None) -> None:
        """Appended only if the subject is still at `expected_seq` (None: wherever it is)."""
        try:
            appended = await self._bus.append(
                subject, event, aggregate_version=version, expected_last_subject_seq=expected_seq
            )
        except ConcurrencyConflict:
            raise FailedPrecondition("the account changed at the same time; try again") from None
        except nats.errors.Error as exc:
            log.exception("append refused", extra={"subject": subject})
            raise Unavailable(f"the event log refused the change ({exc}); nothing was changed, try again") from exc
        await self._replay.wait_for_seq(appended.stream_seq)

    async def append_after_last(self, subject: str, event: NewEvent) -> None:
        """Appended after whatever the subject holds (for a marker on an aggregate this
        projection keeps no version of)."""
        await self._replay.wait_for_seq(await self._bus.append_after_last(subject, event))

    async def settle(self) -> None:
        """After a lost race, let the projection catch up with the stream before deciding again."""
        info = await self._bus.js.stream_info("AUTH")
        await self._replay.wait_for_seq(info.state.last_seq)
