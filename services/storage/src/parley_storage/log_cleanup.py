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

from nats.js import JetStreamContext

from parley_storage.archive import SqlEventArchive
from parley_storage.stream_log import delete_parked_copies, secure_delete

PAGE = 500


async def delete_removed_texts(js: JetStreamContext, archive: SqlEventArchive, *, page: int = PAGE) -> int:
    """Delete every queued text from the log; returns how many events (parked copies included)
    were still there to delete."""
    deleted = 0
    while rows := await archive.log_deletions(limit=page):
        for stream, seq in rows:
            deleted += await secure_delete(js, stream, seq)
        deleted += await delete_parked_copies(js, set(rows))
        await archive.forget_log_deletions(rows)
    return deleted
