"""Deleting events from the log: by the stream's owner only, each event checked first.

Erasure, redaction and retention reach JetStream by a secure delete (the message is overwritten
on disk). Storage decides what is due (it knows from the archive which events hold whose
personal data) and records it on its own STORE stream (LogDeletionDue); the owner of the stream
(auth on AUTH, messaging on MSG: the only NATS users that may delete there) reads each named event
from its own stream and deletes it only if every check passes, else refuses the whole fact. So a
stolen storage credential can ask, and nothing more: it cannot delete a subject's newest event
(the owner's append guard, expected last subject sequence, rests on it), nor anyone's events but
an erased user's own, nor a text that no redaction or retention removed.

Also here: whose personal data an event is (`personal_data_of`), the one rule storage seals the
archive by and the owners check a deletion against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import nats.js.errors
from google.protobuf.message import Message
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from parley.auth.v1.events_pb2 import UserRegistered
from parley.common.v1.envelope_pb2 import EventEnvelope
from parley.messaging.v1.events_pb2 import MessageEdited, MessagePosted

from parley_core.envelope import UnknownEventType, decode, open_payload
from parley_core.markers import MAX_EVENTS_PER_FACT

# "sequence not found" and "no message found": deleted already (an earlier, interrupted run).
ALREADY_DELETED = {10043, 10037}
# A delete of a message that is gone fails with the generic "message delete failed" code and
# "no message found" as its description (nats-server 2.15).
DELETE_FAILED = 10057
ERASURE = "erasure"
REMOVED = "removed"  # texts a redaction or retention removed


def personal_data_of(envelope: EventEnvelope, payload: Message | None) -> str | None:
    """The user whose personal data this event is (its author for content, the account for an
    account's events), or None for a channel's or the platform's own events."""
    if isinstance(payload, MessagePosted):
        return payload.sender_id
    if isinstance(payload, MessageEdited) and payload.editor_id:
        return payload.editor_id  # the new text and name are the editor's, like the post
    if isinstance(payload, UserRegistered):
        return payload.user_id
    if envelope.aggregate_type == "user":
        return envelope.aggregate_id
    return None


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


async def newest_on_its_subject(js: JetStreamContext, stream: str, raw: RawStreamMsg) -> bool:
    last = await js.get_last_msg(stream, raw.subject or "", direct=True)
    return last.seq == raw.seq


@dataclass(frozen=True)
class LoggedEventToDelete:
    """One named event as the owner found it in its own stream."""

    seq: int
    raw: RawStreamMsg
    envelope: EventEnvelope
    payload: Message | None


class DeletionRefused(Exception):
    """The fact names an event its owner may not delete: nothing of the fact was deleted."""


# An owner's rule for one event: raises DeletionRefused with the reason, else returns.
EventCheck = Callable[[LoggedEventToDelete], None]


async def delete_checked(
    js: JetStreamContext, stream: str, refs: Sequence[tuple[int, str]], check: EventCheck, *, user_id: str = ""
) -> int:
    """Check every named event first (all or nothing), then securely delete them; returns how
    many were still there. An event already gone is skipped (a repeated or resumed fact); a
    position that holds another event than the one named is refused."""
    if len(refs) > MAX_EVENTS_PER_FACT:
        raise DeletionRefused(f"{len(refs)} events in one fact; at most {MAX_EVENTS_PER_FACT}")
    found: list[LoggedEventToDelete] = []
    for seq, event_id in refs:
        raw = await read_if_present(js, stream, seq)
        if raw is None:
            continue
        envelope = decode(raw.data or b"")
        if envelope.event_id != event_id:
            raise DeletionRefused(f"{stream} #{seq} is event {envelope.event_id!r}, not {event_id!r}")
        try:
            payload: Message | None = open_payload(envelope)
        except UnknownEventType:
            payload = None
        own_aggregate = envelope.aggregate_type == "user" and bool(user_id) and envelope.aggregate_id == user_id
        # A subject's newest event is what the owner's next append is guarded on; only an erased
        # user's own account subject, where nobody appends again, may lose it.
        if not own_aggregate and await newest_on_its_subject(js, stream, raw):
            raise DeletionRefused(f"{stream} #{seq} is the newest event on {raw.subject}; it is never deleted")
        item = LoggedEventToDelete(seq, raw, envelope, payload)
        check(item)
        found.append(item)
    deleted = 0
    for item in found:
        deleted += await secure_delete(js, stream, item.seq)
    return deleted
