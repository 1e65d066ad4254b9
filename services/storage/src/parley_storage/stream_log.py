"""What storage may do to the JetStream log besides reading it: securely delete events (and their
parked copies). It appends nothing there: the owners of the subjects append the markers first.

Erasure (stream_erasure.py) and the removal of redacted and expired texts (log_cleanup.py)
both delete events only once their owner's marker follows them on the subject, so a deleted
event is never the newest on its subject and the owners' append guards (expected last subject
sequence) keep working.
"""

from __future__ import annotations

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg

PARKED_STREAM = "PARKED"
# "sequence not found" and "no message found": deleted already (an earlier, interrupted run).
ALREADY_DELETED = {10043, 10037}
# A delete of a message that is gone fails with the generic "message delete failed" code and
# "no message found" as its description (nats-server 2.15).
DELETE_FAILED = 10057


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
