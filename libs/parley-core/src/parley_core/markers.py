"""The markers an owner appends on its own subjects when storage records a due fact, and their ids.

Storage never writes to another service's stream. To delete an erased user's events, or expired
texts, from the log it records a fact on its own STORE stream (topology.due_subject), and the
owner of the subject appends the marker it rebuilds from (MessagesErased, MessagesExpired,
AccountErased). Each marker's event id is derived from what it marks, here, by both sides: the
owner appends nothing twice (the stream's de-duplication, and its projection knows the ids it
applied), and storage knows which markers to wait for before it deletes anything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

# Event ids fit the archive's events.event_id column (64 characters), which PostgreSQL enforces.
MAX_EVENT_ID = 64
# Events one LogDeletionDue fact names at most (the owner refuses a larger one).
MAX_EVENTS_PER_FACT = 500


def marker_event_id(kind: str, *parts: str) -> str:
    """A fixed id for the marker a decision leads to, derived from what it is about."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]
    return f"{kind}-{digest}"


@dataclass(frozen=True)
class Marker:
    """One marker as its owner appends it: on which aggregate, with which event id."""

    aggregate_type: str
    aggregate_id: str
    event_id: str

    @property
    def due_event_id(self) -> str:
        """The id of the fact that asks for it: a repeated request appends nothing twice."""
        return f"due-{self.event_id}"


def channel_erasure_marker(user_id: str, channel_id: str) -> Marker:
    """MessagesErased of one erased user on one channel."""
    return Marker("channel", channel_id, marker_event_id("erased", user_id, "channel", channel_id))


def account_erasure_marker(user_id: str, username_key: str) -> Marker:
    """AccountErased of one erased user on one username subject."""
    return Marker("username", username_key, marker_event_id("erased", user_id, "username", username_key))


def expiry_marker(channel_id: str, channel_seqs: Sequence[int]) -> Marker:
    """MessagesExpired of these message numbers of one channel."""
    return Marker("channel", channel_id, marker_event_id("expired", channel_id, ",".join(map(str, channel_seqs))))


def deletion_due_id(stream: str, reason: str, user_id: str, seqs: Sequence[int]) -> str:
    """A LogDeletionDue fact's event id: a repeated request for the same deletions appends nothing twice."""
    return marker_event_id("delete", stream, reason, user_id, ",".join(map(str, seqs)))
