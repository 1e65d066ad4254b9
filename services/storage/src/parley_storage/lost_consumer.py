"""Storage notices a lost archive consumer and makes it again from the archive's own position.

A durable archive consumer deleted on the server (by an operator, or lost with the broker's
state) would leave every later event unarchived while sends are still acknowledged. The bus
notices (its fetches go unanswered and the consumer is gone) and asks here what to do: storage
turns NOT_SERVING (`parley status` shows it), the new consumer starts right after the last
sequence the archive recorded for that stream (nothing after it is skipped; what came before is
archived, and the archive would drop a repeat anyway), an audited `ArchiveConsumerRecreated`
goes on STORE, and storage is SERVING again once the new consumer has caught up with its stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import nats.errors

from parley_core.bus import EventBus
from parley_core.runner import RunContext
from parley_core.topology import ConsumerSpec
from parley_storage.archive import SqlEventArchive
from parley_storage.domain import decide_consumer_recreated
from parley_storage.store_log import record

log = logging.getLogger(__name__)
CAUGHT_UP_POLL_MAX_S = 0.5


class LostConsumers:
    """The bus's ConsumerLoss for storage's archive consumers."""

    def __init__(self, ctx: RunContext, archive: SqlEventArchive) -> None:
        self._ctx = ctx
        self._archive = archive
        self._lost: set[str] = set()
        self._catching_up: set[asyncio.Task[None]] = set()

    @property
    def _bus(self) -> EventBus:
        return self._ctx.bus

    async def resume_from(self, spec: ConsumerSpec) -> int:
        self._lost.add(spec.stream)
        await self._ctx.set_serving(False)
        archived = (await self._archive.positions()).get(spec.stream, 0)
        log.error(
            "archive consumer lost: not serving until it is made again and has caught up",
            extra={"consumer": spec.durable, "archived_up_to": archived},
        )
        return archived + 1

    async def recreated(self, spec: ConsumerSpec, start_seq: int) -> None:
        last = int((await self._bus.js.stream_info(spec.stream)).state.last_seq or 0)
        facts, _ = decide_consumer_recreated(
            stream=spec.stream, consumer=spec.durable, resumed_from_seq=start_seq, stream_last_seq=last
        )
        try:
            await record(self._bus, facts)
        except Exception:  # the consumer runs again all the same; the log line keeps the fact
            log.exception("recording the re-made archive consumer failed", extra={"consumer": spec.durable})
        task = asyncio.create_task(self._serving_once_caught_up(spec, last), name=f"catch-up-{spec.durable}")
        self._catching_up.add(task)
        task.add_done_callback(self._catching_up.discard)

    async def _serving_once_caught_up(self, spec: ConsumerSpec, target: int) -> None:
        """SERVING again once everything up to `target` (the stream's end when the consumer was
        made again) is archived and acknowledged, or nothing is left to archive at all."""
        delay = 0.02
        while True:
            try:
                info = await self._bus.js.consumer_info(spec.stream, spec.durable)
                floor = int(info.ack_floor.stream_seq if info.ack_floor else 0)
                if floor >= target or not (info.num_pending or info.num_ack_pending):
                    break
            except (nats.errors.Error, TimeoutError):
                pass  # lost again, or NATS away for a moment: asked again below
            await asyncio.sleep(delay)  # the consumer's state is polled until it has caught up
            delay = min(delay * 2, CAUGHT_UP_POLL_MAX_S)
        self._lost.discard(spec.stream)
        if not self._lost:
            log.warning("archive consumers caught up again; serving", extra={"consumer": spec.durable})
            await self._ctx.set_serving(True)

    async def stop(self) -> None:
        for task in list(self._catching_up):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
