"""Redacted and expired texts leave the event log: the archive queued them, this deletes them.

In the transaction in which the archive applies a MessageRedacted or a MessagesExpired it blanks
every archived text of those messages (posts and edits) and records where each sits in the log
(table log_deletions). This asks messaging, MSG's owner, to delete them from JetStream with its
secure erase (overwritten on disk: a LogDeletionDue fact, which messaging checks against its own
channels: only texts of redacted or expired messages), deletes their parked copies, then the
rows. The marker is in the stream by then (the archive read it from there) and comes after the
texts, so a deleted text is never the newest on its subject; that is checked here too, with the
event id at each position (a log re-seeded since is left alone), and again by messaging.
Crash-safe and resumable: a row goes only after its deletion, and a repeated fact finds the
events gone and goes on.
"""

from __future__ import annotations

import logging

from parley_core.bus import EventBus
from parley_core.envelope import decode
from parley_core.log_deletion import REMOVED, newest_on_its_subject
from parley_storage.archive import LogDeletion, SqlEventArchive
from parley_storage.stream_log import delete_parked_copies, read_if_present, request_deletions, until_deleted

log = logging.getLogger(__name__)
PAGE = 500
# How long a run waits for messaging to delete what it asked for (the rows stay until it has).
DELETION_TIMEOUT_S = 30.0


async def delete_removed_texts(
    bus: EventBus, archive: SqlEventArchive, *, page: int = PAGE, timeout: float = DELETION_TIMEOUT_S
) -> int:
    """Have every queued text deleted from the log; returns how many events (parked copies
    included) were still there to delete."""
    js = bus.js
    deleted, after = 0, None
    while queued := await archive.log_deletions(limit=page, after=after):
        after = queued[-1]
        done, ours, asked = [], set(), []
        for text in queued:
            raw = await read_if_present(js, text.stream, text.stream_seq)
            if raw is not None and decode(raw.data or b"").event_id != text.event_id:
                # Not the event the archive blanked: the log was replaced (re-seeded) since. Never delete it.
                log.warning("a queued log deletion names another event; left alone", extra=_fields(text))
                done.append(text)
                continue
            if raw is not None and await newest_on_its_subject(js, text.stream, raw):
                # Its marker should follow it, and deleting a subject's newest event would break
                # the owner's append guard: it stays queued until something follows it.
                log.warning("a removed text is still the newest on its subject; deleting it later", extra=_fields(text))
                continue
            if raw is not None:  # None: deleted by an earlier run that stopped before it dropped the row
                asked.append(text)
            done.append(text)
            ours.add((text.stream, text.stream_seq))
        for stream in sorted({t.stream for t in asked}):
            refs = [(t.stream_seq, t.event_id) for t in asked if t.stream == stream]
            present = await request_deletions(bus, stream, REMOVED, refs)
            await until_deleted(js, stream, [seq for seq, _ in present], timeout)  # else: rows kept, retried
            deleted += len(present)
        deleted += await delete_parked_copies(js, ours)
        await archive.forget_log_deletions(done)
    return deleted


def _fields(text: LogDeletion) -> dict[str, object]:
    return {"stream": text.stream, "seq": text.stream_seq, "event_id": text.event_id}
