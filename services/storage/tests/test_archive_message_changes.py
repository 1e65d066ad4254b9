"""Issue 4: edits and redactions in the archive's channel_messages projection, on every backend."""

from __future__ import annotations

import pytest
from parley.messaging.v1.events_pb2 import ChannelCreated, MessageEdited, MessagePosted, MessageRedacted
from sqlalchemy import select

from parley_core.bus import ReceivedEvent
from parley_core.envelope import NewEvent, seal
from parley_core.topology import channel_subject
from parley_storage.archive import SqlEventArchive
from parley_storage.schema import channel_messages, events

CONSUMER = "storage-archive-msg"


def delivered(payload: object, seq: int) -> ReceivedEvent:
    envelope = seal(
        NewEvent(aggregate_type="channel", aggregate_id="c1", payload=payload, actor="alice"),  # type: ignore[arg-type]
        aggregate_version=seq,
        producer="test@0",
        trace_context={},
    )
    return ReceivedEvent(envelope, channel_subject("c1"), "MSG", seq, 1, {})


def conversation() -> list[ReceivedEvent]:
    return [
        delivered(ChannelCreated(channel_id="c1", name="general", creator_id="alice"), 1),
        *(
            delivered(
                MessagePosted(channel_id="c1", message_id=f"m{n}", sender_id="alice", channel_seq=n, body=f"text {n}"),
                n + 1,
            )
            for n in range(1, 6)
        ),
        delivered(MessageEdited(channel_id="c1", message_id="m2", channel_seq=2, body="text 2, edited"), 7),
        delivered(MessageEdited(channel_id="c1", message_id="m3", channel_seq=3, body="secret, edited"), 8),
        delivered(MessageRedacted(channel_id="c1", message_id="m3", channel_seq=3, redactor_id="alice"), 9),
    ]


async def test_history_shows_edits_and_no_text_of_redacted_messages(archive: SqlEventArchive) -> None:
    await archive.archive(CONSUMER, conversation())
    messages, _ = await archive.channel_history("c1", after_seq=0, limit=10)
    assert [m.body for m in messages] == ["text 1", "text 2, edited", "", "text 4", "text 5"]

    def bodies(conn: object) -> list[str]:
        return list(conn.execute(select(channel_messages.c.body)).scalars())  # type: ignore[attr-defined]

    stored = await archive.run("bodies", bodies)
    assert not [b for b in stored if "secret" in b or b == "text 3"]


async def test_a_late_redelivered_edit_never_brings_back_redacted_text(archive: SqlEventArchive) -> None:
    events = conversation()
    await archive.archive(CONSUMER, events[:6] + events[8:])  # the edit at seq 8 is naked and comes back later
    await archive.archive(CONSUMER, [events[7]])
    messages, _ = await archive.channel_history("c1", after_seq=2, limit=1)
    assert messages[0].body == ""


@pytest.mark.parametrize(("before", "limit", "expected", "more"), [(6, 2, [4, 5], True), (3, 5, [1, 2], False)])
async def test_history_pages_backwards(
    archive: SqlEventArchive, before: int, limit: int, expected: list[int], more: bool
) -> None:
    await archive.archive(CONSUMER, conversation())
    messages, has_more = await archive.channel_history("c1", after_seq=0, before_seq=before, limit=limit)
    assert [m.channel_seq for m in messages] == expected
    assert has_more is more


async def test_redaction_blanks_the_archived_events_too(archive: SqlEventArchive) -> None:
    await archive.archive(CONSUMER, conversation())

    def archived(conn: object) -> list[bytes]:
        return list(conn.execute(select(events.c.envelope)).scalars())  # type: ignore[attr-defined]

    envelopes = b"".join(await archive.run("envelopes", archived))
    assert b"secret" not in envelopes
    assert b"text 3" not in envelopes
    assert b"text 2, edited" in envelopes  # other messages keep their text
    assert MessageRedacted.DESCRIPTOR.full_name.encode() in envelopes  # the fact of the redaction stays


async def test_a_text_event_redelivered_after_its_redaction_is_stored_blank(archive: SqlEventArchive) -> None:
    events_in_order = conversation()
    posted_3 = events_in_order[3]  # MessagePosted #3 failed once and comes back after the redaction
    await archive.archive(CONSUMER, [e for e in events_in_order if e is not posted_3])
    await archive.archive(CONSUMER, [posted_3])
    messages, _ = await archive.channel_history("c1", after_seq=2, limit=1)
    assert messages[0].body == ""

    def archived(conn: object) -> list[bytes]:
        return list(conn.execute(select(events.c.envelope)).scalars())  # type: ignore[attr-defined]

    assert b"text 3" not in b"".join(await archive.run("envelopes", archived))
