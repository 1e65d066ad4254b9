"""Storage's decisions on its own STORE stream: pure functions of what storage read and a
command, returning the facts to append (codec.py writes each as its STORE event) and a result;
and the erasures aggregate its projection keeps (erasures.py feeds it). The reads they decide on
(the archive, the log, auth's request) are the api's and jobs' I/O. Free of protobuf, gRPC,
NATS, SQL and I/O."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from parley_core.contracts import MAX_RETENTION_DAYS
from parley_core.errors import FailedPrecondition, InvalidArgument, NotFound
from parley_core.markers import (
    MAX_EVENTS_PER_FACT,
    Marker,
    account_erasure_marker,
    channel_erasure_marker,
    deletion_due_id,
    expiry_marker,
)

T = TypeVar("T")
Decided = tuple[list["Fact"], T]

NS_PER_DAY = 86_400 * 10**9
MARKER_SEQS = 500  # message numbers per expiry fact: a long run is several events, none of them large
# A channel id as messaging makes them (hex), and never a subject wildcard or separator.
CHANNEL_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


# -- facts: what storage records on STORE, past tense ----------------------------------------


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
)
ErasureDue = ChannelErasureDue | AccountErasureDue


# -- the erasures aggregate ------------------------------------------------------------------


@dataclass
class Erasures:
    """Every erasure decided, and which of them also reached the event log (stream_erasure.py)."""

    erased: list[str] = field(default_factory=list)
    reached_streams: set[str] = field(default_factory=set)

    def apply(self, fact: Fact) -> None:
        """Fold one of storage's facts; the ones that are not about erasures leave it as it is."""
        match fact:
            case UserErased():
                self.erased.append(fact.user_id)
            case ErasedFromStreams():
                self.reached_streams.add(fact.user_id)
            case _:
                pass

    def unfinished(self) -> list[str]:
        """Erasures whose keys are shredded but whose events may still be in the log."""
        return [user_id for user_id in dict.fromkeys(self.erased) if user_id not in self.reached_streams]


# -- commands and decisions ------------------------------------------------------------------


@dataclass(frozen=True)
class EraseUserData:
    user_id: str
    erased_by: str  # who, as payloads name people (a user id; a process by its certificate name)
    reason: str


@dataclass(frozen=True)
class ExportUserData:
    user_id: str
    exported_by: str


@dataclass(frozen=True)
class SetRetentionPolicy:
    channel_id: str
    days: int


def check_user_id(user_id: str) -> str:
    if not user_id:
        raise InvalidArgument("user_id is required")
    return user_id


def check_erasure_requested(command: EraseUserData, *, requested: bool) -> EraseUserData:
    """Only an erasure auth recorded the request of (`requested`): auth acts on this erasure's
    facts only then, and without it the keys would be shredded and the events left in the log."""
    if not requested:
        raise FailedPrecondition(
            f"the erasure of {command.user_id} was not requested through auth; call auth's RequestErasure"
            " first (the gateway and `parley erase` do)"
        )
    return command


def decide_erase(command: EraseUserData, *, requested: bool, live_key_ids: Sequence[str]) -> Decided[None]:
    """The audited record of an erasure, naming the keys to destroy (appended before they are)."""
    check_erasure_requested(command, requested=requested)
    erased = UserErased(command.user_id, command.erased_by, command.reason, tuple(live_key_ids))
    return [erased], None


def decide_export(command: ExportUserData) -> Decided[None]:
    """On the privacy audit trail before anything is handed out; the detector weighs it too."""
    return [UserExported(command.user_id, command.exported_by)], None


def check_retention_request(command: SetRetentionPolicy) -> SetRetentionPolicy:
    if not command.channel_id:
        raise InvalidArgument("channel_id is required")
    if not CHANNEL_ID.fullmatch(command.channel_id):
        raise InvalidArgument("channel_id must be a channel's id: at most 64 letters, digits, '-' or '_'")
    if command.days > MAX_RETENTION_DAYS:
        raise InvalidArgument(f"days must be at most {MAX_RETENTION_DAYS} (or 0 to keep forever)")
    return command


def check_channel_exists(command: SetRetentionPolicy, newest_seq: int) -> None:
    """`newest_seq`: the channel subject's newest event in MSG (0: none)."""
    if not newest_seq:
        raise NotFound(f"no channel with id {command.channel_id!r}")


def check_recorded_policy(command: SetRetentionPolicy, recorded_days: int) -> None:
    """The policy is messaging's record (ChannelRetentionSet on the channel): storage applies
    only the days messaging recorded, and sets none of its own."""
    if recorded_days != command.days:
        raise FailedPrecondition(
            f"messaging has recorded {recorded_days or 'no'} retention days for channel {command.channel_id}, not"
            f" {command.days}: set the policy through messaging first (`parley retention CHANNEL DAYS` does"
            " both)"
        )


def expiry_cutoff(days: int, now_ns: int) -> int:
    """Messages sent before this have expired under a policy of `days`."""
    return now_ns - days * NS_PER_DAY


def decide_expiry(channel_id: str, days: int, expired: Sequence[int], *, sent_before_ns: int) -> list[ExpiryDue]:
    """The facts for these message numbers, MARKER_SEQS a fact, each with the marker it asks for.
    Markers (and so the facts' ids) come from the numbers: a run retried inside the stream's
    duplicate window records nothing twice, and messaging appends no second marker."""
    due = []
    for start in range(0, len(expired), MARKER_SEQS):
        chunk = tuple(expired[start : start + MARKER_SEQS])
        due.append(ExpiryDue(expiry_marker(channel_id, chunk), channel_id, chunk, days, sent_before_ns))
    return due


def decide_erasure_markers(
    user_id: str, channels: Mapping[str, Iterable[int]], username_keys: Iterable[str]
) -> list[ErasureDue]:
    """One marker per channel (with the message numbers it loses) and per username subject that
    is about to lose the user's events, in a stable order."""
    due: list[ErasureDue] = [
        ChannelErasureDue(channel_erasure_marker(user_id, channel_id), user_id, channel_id, tuple(sorted(seqs)))
        for channel_id, seqs in sorted(channels.items())
    ]
    due += [AccountErasureDue(account_erasure_marker(user_id, key), user_id, key) for key in sorted(username_keys)]
    return due


def owner_of(due: ErasureDue) -> str:
    """The service that appends the marker the fact asks for."""
    return "messaging" if isinstance(due, ChannelErasureDue) else "auth"


def decide_deletions(
    stream: str, owner: str, reason: str, present: Sequence[tuple[int, str]], *, user_id: str = ""
) -> list[DeletionDue]:
    """The facts asking `owner` to delete these events (still in the log), MAX_EVENTS_PER_FACT a
    fact, in stream order; ids from what they name, so a repeated request records nothing twice."""
    refs = sorted(set(present))
    due = []
    for start in range(0, len(refs), MAX_EVENTS_PER_FACT):
        chunk = tuple(refs[start : start + MAX_EVENTS_PER_FACT])
        fact_id = deletion_due_id(stream, reason, user_id, [seq for seq, _ in chunk])
        due.append(DeletionDue(fact_id, owner, stream, reason, user_id, chunk))
    return due


def decide_finished_after_restore(
    user_id: str, destroyed_key_ids: Sequence[str], *, backup_id: str, by: str
) -> Decided[None]:
    """An erasure decided after the backup was taken, which a restore finds only in the keyring:
    its audited record, as the erasure itself would have appended it (re-seed)."""
    reason = f"erased after backup {backup_id} was taken; finished when it was restored"
    return [UserErased(user_id, by, reason, tuple(destroyed_key_ids))], None


def decide_consumer_recreated(
    *, stream: str, consumer: str, resumed_from_seq: int, stream_last_seq: int
) -> Decided[None]:
    """The audited record of a lost archive consumer made again (LostConsumers)."""
    return [ConsumerRecreated(stream, consumer, resumed_from_seq, stream_last_seq)], None


def decide_erased_from_streams(user_id: str, events_deleted: int) -> Decided[int]:
    return [ErasedFromStreams(user_id, events_deleted)], events_deleted


def decide_kek_rotated(
    *, new_kek_id: str, rewrapped: int, retired_kek_ids: Sequence[str], rotated_by: str
) -> Decided[KekRotated]:
    """The rotation as the audit trail records it; the RPC answers with the same record."""
    rotated = KekRotated(new_kek_id, rewrapped, tuple(retired_kek_ids), rotated_by)
    return [rotated], rotated
