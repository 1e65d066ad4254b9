"""What storage may do to the JetStream log besides reading it: append a marker on a subject it
does not own, as the owner would, and securely delete events (and their parked copies).

Erasure (stream_erasure.py) and the removal of redacted and expired texts (log_cleanup.py)
both delete events; both append their marker first, so a deleted event is never the newest on
its subject and the owners' append guards (expected last subject sequence) keep working.
"""

from __future__ import annotations

import hashlib

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg

from parley_core.bus import ConcurrencyConflict, EventBus
from parley_core.envelope import NewEvent, decode
from parley_core.topology import stream_for_subject

PARKED_STREAM = "PARKED"
# "sequence not found" and "no message found": deleted already (an earlier, interrupted run).
ALREADY_DELETED = {10043, 10037}
# A delete of a message that is gone fails with the generic "message delete failed" code and
# "no message found" as its description (nats-server 2.15).
DELETE_FAILED = 10057
MARKER_ATTEMPTS = 5
# Event ids fit the archive's events.event_id column (64 characters), which PostgreSQL enforces.
MAX_EVENT_ID = 64


def marker_event_id(kind: str, *parts: str) -> str:
    """A fixed id for the marker a decision appends, derived from what it is about: repeated (a
    resumed erasure, a retried retention run) inside the duplicate window, it appends nothing."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]
    return f"{kind}-{digest}"


async def append_after_last(bus: EventBus, subject: str, event: NewEvent) -> int:
    """Append at the subject's newest event with the next aggregate version, as its owner would;
    returns the event's stream sequence (the earlier one when the event id was appended already)."""
    stream = stream_for_subject(subject).name
    for _ in range(MARKER_ATTEMPTS):
        try:
            raw = await bus.js.get_last_msg(stream, subject, direct=True)
            last, version = int(raw.seq or 0), decode(raw.data or b"").aggregate_version
        except nats.js.errors.NotFoundError:
            last, version = 0, 0
        try:
            appended = await bus.append(subject, event, aggregate_version=version + 1, expected_last_subject_seq=last)
        except ConcurrencyConflict:
            continue  # the owner appended meanwhile: read the new last event and try again
        return appended.stream_seq  # a duplicate's ack names the earlier append's sequence
    raise ConcurrencyConflict(f"{subject} kept changing; try again")


async def read_if_present(js: JetStreamContext, stream: str, seq: int) -> RawStreamMsg | None:
    """One event of the log, or None when it was deleted already."""
    try:
        return await js.get_msg(stream, seq=seq)
    except nats.js.errors.NotFoundError:
        return None
    except nats.js.errors.APIError as exc:
        if exc.err_code in ALREADY_DELETED:
            return None
        raise


async def secure_delete(js: JetStreamContext, stream: str, seq: int) -> int:
    """Delete one event, overwriting it on disk (the API's default: no_erase false); 1 if it was there."""
    try:
        return 1 if await js.delete_msg(stream, seq) else 0
    except nats.js.errors.NotFoundError:
        return 0  # already gone: a repeated or resumed deletion, or a hole of a re-seeded log
    except nats.js.errors.APIError as exc:
        gone = exc.err_code == DELETE_FAILED and "no message found" in (exc.description or "")
        if exc.err_code in ALREADY_DELETED or gone:
            return 0
        raise


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
