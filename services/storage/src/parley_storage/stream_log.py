"""What storage may do to the JetStream log besides reading it: ask the owners to delete events,
and securely delete the parked copies of events that left the log.

Storage may delete nothing on AUTH or MSG (its NATS user lacks the API subject). It records a
LogDeletionDue fact on its own STORE stream for the stream's owner, who checks every event named
there against its own stream and deletes it (parley_core.log_deletion); storage then sees the
events gone. Erasure (stream_erasure.py) and the removal of redacted and expired texts
(log_cleanup.py) ask only once their owner's marker follows the events on their subjects.

PARKED holds copies of poison events parked by any service's consumer; no service rebuilds
state from it, so storage, which finds the copies by their origin headers, deletes them itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import nats.js.errors
from nats.js import JetStreamContext

from parley_core.bus import EventBus
from parley_core.log_deletion import read_if_present, secure_delete
from parley_core.topology import STREAMS_BY_NAME
from parley_storage.domain import decide_deletions
from parley_storage.store_log import record

__all__ = ["DeletionsPending", "delete_parked_copies", "read_if_present", "request_deletions", "until_deleted"]

PARKED_STREAM = "PARKED"


class DeletionsPending(Exception):
    """The owner has not deleted the events yet (it may be down, or it refused the fact)."""


async def request_deletions(
    bus: EventBus, stream: str, reason: str, refs: Sequence[tuple[int, str]], *, user_id: str = ""
) -> list[tuple[int, str]]:
    """Record what is due for the stream's owner to delete (the events still in the log); returns
    those, for until_deleted."""
    owner = STREAMS_BY_NAME[stream].owner
    present = [(seq, eid) for seq, eid in sorted(set(refs)) if await read_if_present(bus.js, stream, seq) is not None]
    await record(bus, decide_deletions(stream, owner, reason, present, user_id=user_id))
    return present


async def until_deleted(js: JetStreamContext, stream: str, seqs: Sequence[int], timeout: float) -> None:
    """Wait until the owner deleted every one of them (the log is polled: the owner answers by
    deleting, on its own consumer)."""
    loop = asyncio.get_running_loop()
    deadline, delay, left = loop.time() + timeout, 0.02, sorted(seqs)
    while True:
        left = [seq for seq in left if await read_if_present(js, stream, seq) is not None]
        if not left:
            return
        if loop.time() > deadline:
            owner = STREAMS_BY_NAME[stream].owner
            raise DeletionsPending(
                f"{len(left)} event(s) of {stream} not deleted yet by {owner} (is it running? did it refuse?)"
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


async def delete_parked_copies(js: JetStreamContext, doomed: set[tuple[str, int]]) -> int:
    """A poison event parked by any consumer is a copy of the original: it goes too."""
    if not doomed:
        return 0
    try:
        info = await js.stream_info(PARKED_STREAM)
    except nats.js.errors.NotFoundError:
        return 0
    first, last = int(info.state.first_seq or 0), int(info.state.last_seq or 0)
    if not info.state.messages:
        return 0
    deleted = 0
    for seq in range(first, last + 1):
        msg = await read_if_present(js, PARKED_STREAM, seq)
        if msg is None:
            continue
        headers = msg.headers or {}
        origin = (headers.get("Parley-Original-Stream", ""), headers.get("Parley-Original-Sequence", ""))
        if origin[1].isdigit() and (origin[0], int(origin[1])) in doomed:
            deleted += await secure_delete(js, PARKED_STREAM, seq)
    return deleted
