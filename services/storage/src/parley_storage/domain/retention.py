"""Retention: the checks of a request to apply a channel's policy, and which expired messages
storage asks messaging to mark. Free of protobuf, gRPC, NATS, SQL and I/O."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from parley_core.contracts import MAX_RETENTION_DAYS
from parley_core.errors import FailedPrecondition, InvalidArgument, NotFound
from parley_core.markers import expiry_marker
from parley_storage.domain.facts import ExpiryDue

NS_PER_DAY = 86_400 * 10**9
MARKER_SEQS = 500  # message numbers per expiry fact: a long run is several events, none of them large
# A channel id as messaging makes them (hex), and never a subject wildcard or separator.
CHANNEL_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class SetRetentionPolicy:
    channel_id: str
    days: int


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
