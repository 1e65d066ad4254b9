"""Erasure and export: the erasures aggregate storage's projection keeps (erasures.py feeds it),
and the decisions on what an erasure records, which markers it asks the owners for, and which
events it asks them to delete. Free of protobuf, gRPC, NATS, SQL and I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from parley_core.errors import FailedPrecondition, InvalidArgument
from parley_core.markers import MAX_EVENTS_PER_FACT, account_erasure_marker, channel_erasure_marker, deletion_due_id
from parley_storage.domain.facts import (
    AccountErasureDue,
    ChannelErasureDue,
    Decided,
    DeletionDue,
    ErasedFromStreams,
    ErasureDue,
    Fact,
    UserErased,
    UserExported,
)


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


@dataclass(frozen=True)
class EraseUserData:
    user_id: str
    erased_by: str  # who, as payloads name people (a user id; a process by its certificate name)
    reason: str


@dataclass(frozen=True)
class ExportUserData:
    user_id: str
    exported_by: str


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


def decide_erased_from_streams(user_id: str, events_deleted: int) -> Decided[int]:
    return [ErasedFromStreams(user_id, events_deleted)], events_deleted
