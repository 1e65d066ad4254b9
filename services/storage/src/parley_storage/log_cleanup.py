"""Redacted and expired texts leave the event log: the archive queued them, this deletes them.

In the transaction in which the archive applies a MessageRedacted or a MessagesExpired it blanks
every archived text of those messages (posts and edits) and records where each sits in the log
(table log_deletions). This deletes them from JetStream with its secure erase (overwritten on
disk), and their parked copies, then the rows. The marker is in the stream by then (the archive
read it from there) and comes after the texts, so a deleted text is never the newest on its
subject. Crash-safe and resumable: a row goes only after its deletion, and a repeated deletion
finds the event gone and goes on.
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext

from parley_core.envelope import decode
from parley_storage.archive import SqlEventArchive
from parley_storage.stream_log import delete_parked_copies, read_if_present, secure_delete

log = logging.getLogger(__name__)
PAGE = 500


async def delete_removed_texts(js: JetStreamContext, archive: SqlEventArchive, *, page: int = PAGE) -> int:
    """Delete every queued text from the log; returns how many events (parked copies included)
    were still there to delete."""
    deleted = 0
    while queued := await archive.log_deletions(limit=page):
        ours = []
        for text in queued:
            raw = await read_if_present(js, text.stream, text.stream_seq)
            if raw is not None and decode(raw.data or b"").event_id != text.event_id:
                # Not the event the archive blanked: the log was replaced (re-seeded) since. Never delete it.
                log.warning(
                    "a queued log deletion names another event; left alone",
                    extra={"stream": text.stream, "seq": text.stream_seq, "event_id": text.event_id},
                )
                continue
            ours.append(text)
            if raw is not None:  # None: deleted by an earlier run that stopped before it dropped the row
                deleted += await secure_delete(js, text.stream, text.stream_seq)
        deleted += await delete_parked_copies(js, {(t.stream, t.stream_seq) for t in ours})
        await archive.forget_log_deletions(queued)
    return deleted
