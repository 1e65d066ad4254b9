"""The rules messaging checks a due fact of storage's against before it marks its own channel.

No broker: the projection's rules, and the refusals that come before any append. With real
services, test_trust_boundaries.py (storage's tests) sends forged facts with storage's own
credential, and the erasure and retention tests see the accepted ones marked.
"""

from __future__ import annotations

import pytest
from google.protobuf.message import Message
from parley.storage.v1.events_pb2 import ChannelErasureDue, RetentionDue

from parley_core.bus import ReceivedEvent, Refused
from parley_core.envelope import NewEvent
from parley_core.errors import FailedPrecondition
from parley_messaging.domain import Channel
from parley_messaging.messages import PostedMessage
from parley_messaging.projection import ChannelDirectory
from parley_messaging.service import MessagingApp
from parley_messaging.storage_due import NS_PER_DAY, StorageDue, check_retention_policy
from parley_testing.events import received

NOW_NS = 1_800_000_000 * 10**9


def channel_with(*posts: tuple[int, str, int]) -> Channel:
    """A channel holding posts (number, sender, sent at), and a redacted placeholder as #9."""
    channel = ChannelDirectory().create("c1", "general", "alice", 1)
    for seq, sender, sent_at in posts:
        channel.record_post(PostedMessage("c1", f"m{seq}", sender, sender, seq, "text", sent_at), f"key{seq}")
    channel.record_redaction(9, "m9")
    return channel


def test_an_erasure_marks_only_the_erased_users_posts() -> None:
    channel = channel_with((1, "alice", 0), (2, "bob", 0))
    channel.check_erasure("alice", [1, 9, 12])  # hers, a redacted placeholder, one no longer held
    with pytest.raises(FailedPrecondition, match=r"messages \[2\] of channel c1 were not sent by alice"):
        channel.check_erasure("alice", [1, 2])


def test_an_expiry_marks_only_messages_sent_before_its_cutoff() -> None:
    channel = channel_with((1, "alice", NOW_NS - 40 * NS_PER_DAY), (2, "bob", NOW_NS))
    channel.check_expiry([1, 9, 12], NOW_NS - 30 * NS_PER_DAY)
    with pytest.raises(FailedPrecondition, match=r"messages \[2\] of channel c1 are not older than the cutoff"):
        channel.check_expiry([1, 2], NOW_NS - 30 * NS_PER_DAY)


@pytest.mark.parametrize(
    ("policy", "days", "cutoff", "why"),
    [
        (30, 30, NOW_NS - 29 * NS_PER_DAY, "is not 30 day"),  # not 30 days ago by messaging's clock
        (30, 1, NOW_NS - 2 * NS_PER_DAY, "is not 30 day"),  # the fact's own days decide nothing
        (1, 1, NOW_NS, "is not 1 day"),  # everything up to now
        (0, 30, NOW_NS - 400 * NS_PER_DAY, "no retention policy is recorded"),  # none set: keep forever
    ],
)
def test_a_retention_fact_no_recorded_policy_covers_is_refused(policy: int, days: int, cutoff: int, why: str) -> None:
    channel = channel_with()
    channel.retention_days = policy
    due = RetentionDue(channel_id="c1", channel_seqs=[1], retention_days=days, sent_before_unix_ns=cutoff)
    with pytest.raises(FailedPrecondition, match=why):
        check_retention_policy(channel, due, now_ns=NOW_NS)
    channel.retention_days = 30
    check_retention_policy(
        channel, RetentionDue(channel_id="c1", sent_before_unix_ns=NOW_NS - 31 * NS_PER_DAY), now_ns=NOW_NS
    )


def from_storage(due: Message, *, aggregate_type: str, aggregate_id: str, kind: str) -> ReceivedEvent:
    """`due` as messaging's consumer of storage's due facts receives it."""
    return received(
        NewEvent(aggregate_type=aggregate_type, aggregate_id=aggregate_id, payload=due, actor="service:storage"),
        stream_seq=1,
        stream="STORE",
        subject=f"parley.storage.due.messaging.{kind}.{aggregate_id}",
    )


async def test_a_retention_fact_for_a_channel_messaging_does_not_know_is_refused() -> None:
    due = RetentionDue(channel_id="c1", channel_seqs=[1], retention_days=1, sent_before_unix_ns=0)
    fact = from_storage(due, aggregate_type="retention", aggregate_id="c1", kind="expiry")
    with pytest.raises(Refused, match="no retention policy covers it"):
        await StorageDue(MessagingApp(), now_ns=lambda: NOW_NS).handle([fact])


async def test_a_fact_naming_something_that_is_no_id_is_refused() -> None:
    due = ChannelErasureDue(user_id="alice", channel_id="c1.>", channel_seqs=[1])
    fact = from_storage(due, aggregate_type="erasure", aggregate_id="alice", kind="erasure")
    with pytest.raises(Refused, match="is not an id"):
        await StorageDue(MessagingApp()).handle([fact])
