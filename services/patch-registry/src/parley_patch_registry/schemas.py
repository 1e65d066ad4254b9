"""Can a release read every event its service will replay? min_event_schema against the archive.

An event's schema version is what its envelope carries (`schema_version`, per event type, 1
until a payload change adds an upcaster). A release declares `min_event_schema`: the oldest
version it can still read (it may have dropped older upcasters). It must not replace a version
that could read them while such events remain in the streams its service reads, or its first
replay would fail. The storage archive holds every stream's events; events not archived yet
are newer than the archived ones of their type.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from parley_core.errors import FailedPrecondition
from parley_core.topology import STREAMS


@dataclass(frozen=True)
class StoredSchemas:
    """The oldest schema version of one event type in one stream, and how many such events exist."""

    stream: str
    event_type: str
    oldest: int
    events: int


# Asks the archive (storage's GetSchemaVersions); raises parley_core.errors.Unavailable if it cannot.
SchemaCensus = Callable[[], Awaitable[list[StoredSchemas]]]


def streams_read_by(service: str) -> frozenset[str]:
    return frozenset(s.name for s in STREAMS if service in s.readers or s.owner == service)


def check_readable(service: str, version: str, min_event_schema: int, stored: Iterable[StoredSchemas]) -> None:
    """FailedPrecondition naming the oldest events the release could not read, if there are any."""
    streams = streams_read_by(service)
    # Envelopes without a version are version 1 (parley_core.envelope.open_payload).
    unreadable = sorted(
        (s for s in stored if s.stream in streams and max(s.oldest, 1) < min_event_schema),
        key=lambda s: (s.oldest, s.stream, s.event_type),
    )
    if not unreadable:
        return
    oldest = unreadable[0]
    raise FailedPrecondition(
        f"{service} {version} reads event schema {min_event_schema} and newer, but the {oldest.stream} stream "
        f"still holds {oldest.events} {oldest.event_type} events at schema {max(oldest.oldest, 1)}"
        + (f" (and {len(unreadable) - 1} more event types)" if len(unreadable) > 1 else "")
        + f"; upcast those events first, or publish a release with --min-event-schema {max(oldest.oldest, 1)}"
    )
