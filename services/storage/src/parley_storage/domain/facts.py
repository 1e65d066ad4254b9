"""The past-tense facts storage records on its own STORE stream (codec.py writes each as its
event). Free of protobuf, gRPC, NATS, SQL and I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from parley_core.markers import Marker

T = TypeVar("T")


@dataclass(frozen=True)
class UserErased:
    """The audited decision to erase: appended before the keys are shredded."""

    user_id: str
    erased_by: str
    reason: str
    destroyed_key_ids: tuple[str, ...]


@dataclass(frozen=True)
class ErasedFromStreams:
    """The closing record: the user's events have left the log too."""

    user_id: str
    events_deleted: int


@dataclass(frozen=True)
class UserExported:
    user_id: str
    exported_by: str


@dataclass(frozen=True)
class KekRotated:
    new_kek_id: str
    rewrapped_data_keys: int
    retired_kek_ids: tuple[str, ...]
    rotated_by: str


@dataclass(frozen=True)
class ExpiryDue:
    """Messages of a channel that expired, for messaging to mark (`marker`)."""

    marker: Marker
    channel_id: str
    channel_seqs: tuple[int, ...]
    retention_days: int
    sent_before_ns: int


@dataclass(frozen=True)
class ChannelErasureDue:
    """An erased user's messages on a channel that are about to leave the log, for messaging to mark."""

    marker: Marker
    user_id: str
    channel_id: str
    channel_seqs: tuple[int, ...]


@dataclass(frozen=True)
class AccountErasureDue:
    """An erased user's username subject about to lose events, for auth to mark."""

    marker: Marker
    user_id: str
    username_key: str


@dataclass(frozen=True)
class DeletionDue:
    """Events of another service's stream for its owner to delete securely (parley_core.log_deletion)."""

    fact_id: str
    owner: str
    stream: str
    reason: str
    user_id: str
    events: tuple[tuple[int, str], ...]  # (stream sequence, event id)


@dataclass(frozen=True)
class ConsumerRecreated:
    """An archive consumer lost on the server and made again from the archive's position."""

    stream: str
    consumer: str
    resumed_from_seq: int
    stream_last_seq: int


@dataclass(frozen=True)
class StreamReseeded:
    """One stream put back from the archive by a re-seed."""

    stream: str
    events: int  # on their subjects now
    holes: int  # sequences left empty: the archive cannot open what was there
    last_seq: int


@dataclass(frozen=True)
class LogRestored:
    """The closing record of a re-seed from a restored backup."""

    backup_id: str
    backup_created_at: str
    streams: tuple[StreamReseeded, ...]
    erasures_finished: tuple[str, ...]


Fact = (
    UserErased
    | ErasedFromStreams
    | UserExported
    | KekRotated
    | ExpiryDue
    | ChannelErasureDue
    | AccountErasureDue
    | DeletionDue
    | ConsumerRecreated
    | LogRestored
)
ErasureDue = ChannelErasureDue | AccountErasureDue
# What a decision returns: the facts to record, and what the command answers.
Decided = tuple[list[Fact], T]
