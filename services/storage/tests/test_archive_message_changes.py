"""Issue 4: edits, redactions, leaving and paging in the archive's projections, on every backend."""

from __future__ import annotations

import pytest
from google.protobuf.message import Message
from parley.messaging.v1.events_pb2 import (
    ChannelCreated,
    MemberJoined,
    MemberLeft,
    MessageEdited,
    MessagePosted,
    MessageRedacted,
    ReactionAdded,
    ReactionRemoved,
)
from sqlalchemy import Connection, select

from parley_core.bus import ReceivedEvent
from parley_core.envelope import NewEvent
from parley_storage.archive import EXPIRED, LogDeletion, SqlEventArchive
from parley_storage.schema import events
from parley_testing.events import received

CONSUMER = "storage-archive-msg"


def delivered(payload: Message, seq: int) -> ReceivedEvent:
    return received(
        NewEvent(aggregate_type="channel", aggregate_id="c1", payload=payload, actor="alice"), stream_seq=seq
    )


def posted(n: int) -> MessagePosted:
    return MessagePosted(
        channel_id="c1", message_id=f"m{n}", sender_id="alice", sender_name="alice", channel_seq=n, body=f"text {n}"
    )


def edited(n: int, body: str) -> MessageEdited:
    return MessageEdited(channel_id="c1", message_id=f"m{n}", channel_seq=n, body=body, editor_name="alice")


def conversation() -> list[ReceivedEvent]:
    return [
        delivered(ChannelCreated(channel_id="c1", name="general", creator_id="alice"), 1),
        *(delivered(posted(n), n + 1) for n in range(1, 6)),
        delivered(edited(2, "text 2, edited"), 7),
        delivered(edited(3, "secret, edited"), 8),
        delivered(MessageRedacted(channel_id="c1", message_id="m3", channel_seq=3, redactor_id="alice"), 9),
    ]


async def queued(archive: SqlEventArchive) -> list[int]:
    """Stream sequences of the texts waiting for their deletion from the log."""
    return [d.stream_seq for d in await archive.log_deletions(limit=10) if d.stream == "MSG"]


def key_ids(conn: Connection) -> dict[int, str]:
    return {row.stream_seq: row.key_id for row in conn.execute(select(events.c.stream_seq, events.c.key_id))}


async def test_history_shows_edits_and_no_text_of_redacted_messages(archive: SqlEventArchive) -> None:
    batch = conversation()
    await archive.archive(CONSUMER, batch)
    messages, _ = await archive.channel_history("c1", after_seq=0, limit=10)
    assert [m.body for m in messages] == ["text 1", "text 2, edited", "", "text 4", "text 5"]
    assert not any(m.erased for m in messages)  # redacted is not erased: no key was shredded
    assert messages[1].sender_name == "alice"
    keys = await archive.run("key_ids", key_ids)
    assert keys[4] == keys[8] == EXPIRED  # the post and the edit of #3 lost their content
    assert keys[9] != EXPIRED  # the redaction itself is kept
    assert keys[3] != EXPIRED  # other messages keep theirs
    # Both texts of #3 wait for their deletion from the log, recorded with the blanking.
    deletions = await archive.log_deletions(limit=10)
    assert deletions == [LogDeletion("MSG", e.stream_seq, e.envelope.event_id) for e in (batch[3], batch[7])]
    assert await archive.archive(CONSUMER, batch) == 0  # a redelivery queues nothing more
    assert await queued(archive) == [4, 8]
    await archive.forget_log_deletions(deletions[:1])
    assert await queued(archive) == [8]


async def test_a_late_redelivered_edit_never_brings_back_redacted_text(archive: SqlEventArchive) -> None:
    events_in_order = conversation()
    await archive.archive(CONSUMER, events_in_order[:7] + events_in_order[8:])  # the edit of #3 comes back later
    await archive.archive(CONSUMER, [events_in_order[7]])
    messages, _ = await archive.channel_history("c1", after_seq=2, limit=1)
    assert messages[0].body == ""
    assert (await archive.run("key_ids", key_ids))[8] == EXPIRED
    assert await queued(archive) == [4, 8]


async def test_a_member_who_left_is_no_longer_a_member(archive: SqlEventArchive) -> None:
    await archive.archive(
        CONSUMER,
        [
            delivered(ChannelCreated(channel_id="c1", name="general", creator_id="alice"), 1),
            delivered(MemberJoined(channel_id="c1", user_id="bob"), 2),
            delivered(MemberLeft(channel_id="c1", user_id="bob"), 3),
        ],
    )
    assert await archive.is_member("c1", "alice")
    assert not await archive.is_member("c1", "bob")


@pytest.mark.parametrize(("before", "limit", "expected", "more"), [(6, 2, [4, 5], True), (3, 5, [1, 2], False)])
async def test_history_pages_backwards(
    archive: SqlEventArchive, before: int, limit: int, expected: list[int], more: bool
) -> None:
    await archive.archive(CONSUMER, conversation())
    messages, has_more = await archive.channel_history("c1", after_seq=0, before_seq=before, limit=limit)
    assert [m.channel_seq for m in messages] == expected
    assert has_more is more


async def test_a_post_redelivered_after_its_redaction_stays_blanked(archive: SqlEventArchive) -> None:
    events_in_order = conversation()
    post_of_3 = events_in_order[3]  # stream seq 4: the consumer retried it after the redaction
    await archive.archive(CONSUMER, events_in_order[:3] + events_in_order[4:])
    await archive.archive(CONSUMER, [post_of_3])
    messages, _ = await archive.channel_history("c1", after_seq=2, limit=1)
    assert messages[0].channel_seq == 3
    assert messages[0].body == ""
    assert (await archive.run("key_ids", key_ids))[4] == EXPIRED
    assert await queued(archive) == [4, 8]


async def test_history_carries_threads_and_reactions(archive: SqlEventArchive) -> None:
    reply = MessagePosted(
        channel_id="c1",
        message_id="r1",
        sender_id="bob",
        sender_name="bob",
        channel_seq=6,
        body="a reply",
        thread_root_seq=1,
    )
    await archive.archive(
        CONSUMER,
        [
            *conversation(),
            delivered(reply, 10),
            delivered(edited(6, "a reply, edited"), 11),
            delivered(ReactionAdded(channel_id="c1", channel_seq=1, user_id="bob", emoji="👍"), 12),
            delivered(ReactionAdded(channel_id="c1", channel_seq=1, user_id="carol", emoji="👍"), 13),
            delivered(ReactionAdded(channel_id="c1", channel_seq=1, user_id="carol", emoji="🎉"), 14),
            delivered(ReactionRemoved(channel_id="c1", channel_seq=1, user_id="carol", emoji="🎉"), 15),
        ],
    )
    messages, _ = await archive.channel_history("c1", after_seq=0, limit=10)
    by_seq = {m.channel_seq: m for m in messages}
    assert by_seq[6].thread_root_seq == 1  # edited: the thread still comes from the original post
    assert by_seq[6].body == "a reply, edited"
    assert by_seq[2].thread_root_seq == 0
    assert by_seq[1].reactions == (("👍", ("bob", "carol")),)
    assert by_seq[2].reactions == ()


@pytest.mark.parametrize(("hide", "bob_sees_from"), [(True, 3), (False, 1)])
async def test_history_before_a_join_is_hidden_when_the_channel_says_so(
    archive: SqlEventArchive, hide: bool, bob_sees_from: int
) -> None:
    created = ChannelCreated(channel_id="c1", name="general", creator_id="alice", hide_history_before_join=hide)
    await archive.archive(
        CONSUMER,
        [
            delivered(created, 1),
            delivered(posted(1), 2),
            delivered(posted(2), 3),
            delivered(MemberJoined(channel_id="c1", user_id="bob"), 4),
            delivered(posted(3), 5),
        ],
    )
    assert (await archive.history_view("c1", "bob")).first_seq == bob_sees_from
    assert (await archive.history_view("c1", "alice")).first_seq == 1  # the creator was there from the start
