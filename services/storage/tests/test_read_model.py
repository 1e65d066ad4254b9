"""Issue 15: the read model history is served from, written when events are archived and filled
for an existing archive by migration 0004, on every backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic import command
from google.protobuf.message import Message
from parley.messaging.v1.events_pb2 import (
    ChannelCreated,
    MemberJoined,
    MemberLeft,
    MessageEdited,
    MessagePosted,
    MessageRedacted,
    MessagesExpired,
    ReactionAdded,
    ReactionRemoved,
)
from sqlalchemy import Connection, inspect, select

from parley_core.actor import Actor
from parley_core.bus import ReceivedEvent
from parley_core.envelope import NewEvent, open_payload
from parley_core.visibility import HistoryView
from parley_storage.archive import SqlEventArchive, StoredMessage
from parley_storage.archive.backfill import KeyringNeeded
from parley_storage.archive.db import ArchiveDb
from parley_storage.datakeys import DataKeys
from parley_storage.kek import FileKeyring
from parley_storage.migrate import _config, upgrade_to_head
from parley_storage.schema import (
    channel_members,
    channel_messages,
    channels,
    message_reactions,
    message_texts,
    removed_messages,
)
from parley_testing.events import message_posted, received

CONSUMER = "storage-archive-msg"


class Log:
    """The MSG stream as JetStream numbers it, and each channel's messages as messaging numbers them."""

    def __init__(self) -> None:
        self.seq = 0
        self.numbers: dict[str, int] = {}

    def event(self, channel_id: str, payload: Message, *, actor: str = "alice") -> ReceivedEvent:
        self.seq += 1
        return received(
            NewEvent(aggregate_type="channel", aggregate_id=channel_id, payload=payload, actor=Actor.user(actor)),
            stream_seq=self.seq,
        )

    def post(self, channel_id: str, sender: str, *, thread_root_seq: int = 0) -> ReceivedEvent:
        n = self.numbers[channel_id] = self.numbers.get(channel_id, 0) + 1
        body = message_posted(channel_id, n, sender, f"{sender} #{n}", thread_root_seq=thread_root_seq)
        return self.event(channel_id, body, actor=sender)


def scenario(log: Log) -> list[ReceivedEvent]:
    """Threads, edits, reactions, a redaction, an expiry, joins and a leave in two channels."""
    react = ReactionAdded
    return [
        log.event("open", ChannelCreated(channel_id="open", name="open", creator_id="alice")),
        *(log.post("open", sender) for sender in ("alice", "bob", "erin", "alice")),
        log.post("open", "bob", thread_root_seq=2),  # 5
        log.event("open", MessageEdited(channel_id="open", channel_seq=5, body="bob #5, edited", editor_id="bob")),
        log.event("open", react(channel_id="open", channel_seq=1, user_id="bob", emoji="+1")),
        log.event("open", react(channel_id="open", channel_seq=1, user_id="alice", emoji="+1")),
        log.event("open", react(channel_id="open", channel_seq=2, user_id="bob", emoji="heart")),
        log.event("open", react(channel_id="open", channel_seq=2, user_id="bob", emoji="tada")),
        log.event("open", ReactionRemoved(channel_id="open", channel_seq=2, user_id="bob", emoji="heart")),
        log.event("open", react(channel_id="open", channel_seq=4, user_id="bob", emoji="eyes")),
        log.event("open", MessageRedacted(channel_id="open", channel_seq=1, redactor_id="alice")),
        log.event("open", MessagesExpired(channel_id="open", channel_seqs=[4])),
        log.event(
            "quiet", ChannelCreated(channel_id="quiet", name="q", creator_id="alice", hide_history_before_join=True)
        ),
        log.post("quiet", "alice"),
        log.post("quiet", "alice"),
        log.event("quiet", MemberJoined(channel_id="quiet", user_id="bob")),
        log.post("quiet", "bob"),
        log.event("quiet", MemberJoined(channel_id="quiet", user_id="carol")),
        log.event("quiet", MemberLeft(channel_id="quiet", user_id="bob")),
        log.post("quiet", "carol"),
        log.event("quiet", MemberJoined(channel_id="quiet", user_id="bob")),  # the latest join counts
        log.post("quiet", "alice"),
    ]


async def everything_read(archive: SqlEventArchive) -> dict[str, Any]:
    pages: dict[str, Any] = {}
    for channel_id in ("open", "quiet"):
        pages[channel_id] = (await archive.channel_history(channel_id, after_seq=0, limit=100))[0]
        pages[f"{channel_id} newest 2"] = await archive.channel_history(channel_id, after_seq=0, before_seq=99, limit=2)
    for user_id in ("alice", "bob", "carol"):
        pages[f"view {user_id}"] = await archive.history_view("quiet", user_id)
    return pages


def message(pages: dict[str, Any], channel_id: str, seq: int) -> StoredMessage:
    return next(m for m in pages[channel_id] if m.channel_seq == seq)


async def test_history_is_read_from_the_read_model(archive: SqlEventArchive) -> None:
    await archive.archive(CONSUMER, scenario(Log()))
    await archive.shred_user("erin")
    read = await everything_read(archive)
    assert [m.channel_seq for m in read["open"]] == [1, 2, 3, 5]  # #4 expired
    assert message(read, "open", 1).body == ""  # redacted, its reactions kept
    assert message(read, "open", 1).reactions == (("+1", ("alice", "bob")),)
    assert message(read, "open", 2).reactions == (("tada", ("bob",)),)  # heart removed
    assert message(read, "open", 3).erased
    assert message(read, "open", 3).body == ""
    edited = message(read, "open", 5)
    assert (edited.body, edited.edited, edited.thread_root_seq) == ("bob #5, edited", True, 2)
    assert read["view alice"] == HistoryView(first_seq=1)  # the creator joined before any post
    assert read["view bob"] == HistoryView(first_seq=5)  # four posts before his second join
    assert read["view carol"] == HistoryView(first_seq=4)


async def test_a_migrated_archive_reads_as_it_did(archive: SqlEventArchive, tmp_path: Path) -> None:
    """An archive as the code before the read model left it (schema 0003: its tables hold what
    that code wrote into them), migrated with the keyring, reads exactly as before."""
    await archive.archive(CONSUMER, scenario(Log()))
    await archive.shred_user("erin")
    before = await everything_read(archive)
    engine = archive.engine
    config = _config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0003")
        assert "message_reactions" not in inspect(conn).get_table_names()
    with pytest.raises(KeyringNeeded, match="keyring"):
        upgrade_to_head(engine)
    keys = DataKeys(FileKeyring.load_or_create(tmp_path / "kek.json"))  # the archive fixture's keyring
    upgrade_to_head(engine, keys)
    assert await everything_read(SqlEventArchive(engine, keys)) == before


async def test_a_late_reaction_change_does_not_undo_a_later_one(archive: SqlEventArchive) -> None:
    log = Log()
    events = [
        log.event("c", ChannelCreated(channel_id="c", name="c", creator_id="alice")),
        log.post("c", "alice"),
        log.event("c", ReactionAdded(channel_id="c", channel_seq=1, user_id="bob", emoji="+1")),
        log.event("c", ReactionRemoved(channel_id="c", channel_seq=1, user_id="bob", emoji="+1")),
        log.event("c", ReactionAdded(channel_id="c", channel_seq=1, user_id="bob", emoji="+1")),
    ]
    await archive.archive(CONSUMER, [*events[:3], events[4]])
    assert (await archive.channel_history("c", after_seq=0, limit=5))[0][0].reactions == (("+1", ("bob",)),)
    await archive.archive(CONSUMER, [events[3]])  # the removal, retried, arrives after the re-add
    assert (await archive.channel_history("c", after_seq=0, limit=5))[0][0].reactions == (("+1", ("bob",)),)


async def test_a_post_archived_after_a_join_moves_the_joiners_view(archive: SqlEventArchive) -> None:
    log = Log()
    created = log.event(
        "q", ChannelCreated(channel_id="q", name="q", creator_id="alice", hide_history_before_join=True)
    )
    first, late = log.post("q", "alice"), log.post("q", "alice")
    joined = log.event("q", MemberJoined(channel_id="q", user_id="bob"))
    await archive.archive(CONSUMER, [created, first, joined])
    assert await archive.history_view("q", "bob") == HistoryView(first_seq=2)
    await archive.archive(CONSUMER, [late])
    assert await archive.history_view("q", "bob") == HistoryView(first_seq=3)


async def test_a_page_opens_only_its_own_texts_and_reactions(
    archive: SqlEventArchive, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = Log()
    batch = [log.event("big", ChannelCreated(channel_id="big", name="big", creator_id="alice"))]
    for n in range(1, 201):
        batch += [
            log.post("big", "alice"),
            log.event("big", ReactionAdded(channel_id="big", channel_seq=n, user_id="bob", emoji="+1")),
        ]
    await archive.archive(CONSUMER, batch)
    opened: list[int] = []
    open_row = ArchiveDb.open_row

    def counting(self: ArchiveDb, conn: Any, row: Any) -> Any:
        opened.append(row.stream_seq)
        return open_row(self, conn, row)

    monkeypatch.setattr(ArchiveDb, "open_row", counting)
    page, has_more = await archive.channel_history("big", after_seq=100, limit=10)
    assert has_more
    assert [m.channel_seq for m in page] == list(range(101, 111))
    assert all(m.reactions == (("+1", ("bob",)),) for m in page)
    assert len(opened) == 20  # ten texts and their ten reactions, of 400 such events


async def test_a_redelivered_batch_changes_nothing_in_the_read_model(archive: SqlEventArchive) -> None:
    batch = scenario(Log())
    await archive.archive(CONSUMER, batch)
    before = await everything_read(archive)
    assert await archive.archive(CONSUMER, batch) == 0
    assert await everything_read(archive) == before  # no post counted twice, no reaction applied twice


async def test_the_read_model_keeps_no_content(archive: SqlEventArchive) -> None:
    """Texts and emoji stay in their sealed events only, so shredding, redaction and retention
    reach them there; an expired message's reactions leave with it."""
    batch = scenario(Log())
    await archive.archive(CONSUMER, batch)
    payloads = [open_payload(item.envelope) for item in batch]
    content = {p.body for p in payloads if isinstance(p, MessagePosted | MessageEdited)}
    content |= {p.emoji for p in payloads if isinstance(p, ReactionAdded | ReactionRemoved)}
    tables = (channel_messages, channels, channel_members, message_reactions, message_texts, removed_messages)

    def rows(conn: Connection) -> dict[str, list[Any]]:
        return {t.name: [tuple(r) for r in conn.execute(select(t))] for t in tables}

    found = await archive.run("test_read_model_rows", rows)
    values = {str(v) for table in found.values() for row in table for v in row}
    assert not values & content
    reacted = {(r[0], r[1]) for r in found["message_reactions"]}
    assert ("open", 4) not in reacted  # expired with its message
    assert ("open", 2) in reacted
