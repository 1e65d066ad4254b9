"""Redacted and expired texts leave the event log: the archive queued them, this deletes them.

In the transaction in which the archive applies a MessageRedacted or a MessagesExpired it blanks
every archived text of those messages (posts and edits) and records where each sits in the log
(table log_deletions). This deletes them from JetStream with its secure erase (overwritten on
disk), and their parked copies, then the rows. The marker is in the stream by then (the archive
read it from there) and comes after the texts, so a deleted text is never the newest on its
subject; that is checked anyway, with the event id at each position (a log re-seeded since is
left alone). Crash-safe and resumable: a row goes only after its deletion, and a repeated
deletion finds the event gone and goes on.
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg

from parley_core.envelope import decode
from parley_storage.archive import LogDeletion, SqlEventArchive
from parley_storage.stream_log import delete_parked_copies, read_if_present, secure_delete

log = logging.getLogger(__name__)
PAGE = 500


async def delete_removed_texts(js: JetStreamContext, archive: SqlEventArchive, *, page: int = PAGE) -> int:
    """Delete every queued text from the log; returns how many events (parked copies included)
    were still there to delete."""
    deleted, after = 0, None
    while queued := await archive.log_deletions(limit=page, after=after):
        after = queued[-1]
        done, ours = [], set()
        for text in queued:
            raw = await read_if_present(js, text.stream, text.stream_seq)
            if raw is not None and decode(raw.data or b"").event_id != text.event_id:
                # Not the event the archive blanked: the log was replaced (re-seeded) since. Never delete it.
                log.warning("a queued log deletion names another event; left alone", extra=_fields(text))
                done.append(text)
                continue
            if raw is not None and await _newest_on_its_subject(js, text.stream, raw):
                # Its marker should follow it, and deleting a subject's newest event would break
                # the owner's append guard: it stays queued until something follows it.
                log.warning("a removed text is still the newest on its subject; deleting it later", extra=_fields(text))
                continue
            if raw is not None:  # None: deleted by an earlier run that stopped before it dropped the row
                deleted += await secure_delete(js, text.stream, text.stream_seq)
            done.append(text)
            ours.add((text.stream, text.stream_seq))
        deleted += await delete_parked_copies(js, ours)
        await archive.forget_log_deletions(done)
    return deleted


async def _newest_on_its_subject(js: JetStreamContext, stream: str, raw: RawStreamMsg) -> bool:
    last = await js.get_last_msg(stream, raw.subject or "", direct=True)
    return last.seq == raw.seq


def _fields(text: LogDeletion) -> dict[str, object]:
    return {"stream": text.stream, "seq": text.stream_seq, "event_id": text.event_id}
