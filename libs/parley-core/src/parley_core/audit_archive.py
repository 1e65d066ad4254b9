"""The audit chain as storage's archive gives it back over its API: rows of the SEC stream read
as records (parley_core.audit.audit_row) and the verification keys from the AUTH stream's events.

Used by `parley audit verify` (parley_cli.audit, as the operator); the verifier itself is
parley_core.audit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from google.protobuf.message import DecodeError, Message
from parley.storage.v1 import storage_pb2

from parley_core.audit import StoredRecord, TrustedKeys, audit_row, trusted_keys
from parley_core.envelope import UnknownEventType, decode, open_payload

PAGE = 1000

ReadPage = Callable[[storage_pb2.ReadArchivedStreamRequest], Awaitable[storage_pb2.ArchivedEventsPage]]


async def archived_events(read: ReadPage, stream: str) -> list[storage_pb2.ArchivedEvent]:
    """Every archived row of `stream`, as storage gives it (erased and unreadable ones included);
    `read` is one ReadArchivedStream call, made with whatever identity the caller has."""
    found: list[storage_pb2.ArchivedEvent] = []
    after = 0
    while True:
        page = await read(storage_pb2.ReadArchivedStreamRequest(stream=stream, after_seq=after, limit=PAGE))
        found.extend(page.events)
        if page.events:
            after = page.events[-1].stream_seq
        if not page.has_more:
            return found


def payload_of(event: storage_pb2.ArchivedEvent) -> Message | None:
    if event.erased or event.unreadable or event.withheld:
        return None
    try:
        return open_payload(decode(event.envelope))
    except (DecodeError, UnknownEventType):
        return None


def audit_rows(events: Iterable[storage_pb2.ArchivedEvent]) -> list[StoredRecord]:
    """The rows of SEC that hold, or claim to hold, an audit record (parley_core.audit.audit_row)."""
    rows = (
        audit_row(
            position=int(event.stream_seq),
            claimed_index=int(event.aggregate_version),
            payload=payload_of(event),
            event_type=event.event_type,
            aggregate_type=event.aggregate_type,
            unreadable=event.unreadable,
            erased=event.erased,
        )
        for event in events
    )
    return [row for row in rows if row is not None]


def archived_trusted_keys(events: Iterable[storage_pb2.ArchivedEvent]) -> TrustedKeys:
    return trusted_keys(payload for event in events if (payload := payload_of(event)) is not None)
