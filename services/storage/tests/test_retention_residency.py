"""Retention per channel (RetentionDue facts, the MessagesExpired markers messaging appends for
them) and data residency, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from parley.messaging.v1.events_pb2 import ChannelCreated, MessageEdited, MessagePosted, MessagesExpired
from parley.storage.v1.events_pb2 import RetentionDue
from sqlalchemy import Connection, select

from parley_core.bus import ReceivedEvent
from parley_core.envelope import NewEvent
from parley_storage.archive import EXPIRED, NS_PER_DAY, RetentionPolicy, SqlEventArchive, open_engine
from parley_storage.migrate import upgrade_to_head
from parley_storage.residency import (
    ResidencyBinding,
    ResidencyViolation,
    enforce_in_database,
    location_of,
    rebind_restored,
)
from parley_storage.retention import MARKER_SEQS, expiry_facts
from parley_storage.schema import events, log_deletions, residency
from parley_storage.service import check_residency
from parley_storage.settings import StorageSettings
from parley_testing.events import received

NOW_NS = 1_800_000_000 * 10**9
CONSUMER = "storage-archive-msg"


class Channels:
    def __init__(self) -> None:
        self.seq = 0
        self.versions: dict[str, int] = {}
        self.channel_seqs: dict[str, int] = {}

    def _event(self, channel: str, payload: Message) -> ReceivedEvent:
        return self.appended(NewEvent(aggregate_type="channel", aggregate_id=channel, payload=payload, actor="u1"))

    def appended(self, event: NewEvent) -> ReceivedEvent:
        """`event` as the archive receives it after it was appended on its channel."""
        self.seq += 1
        self.versions[event.aggregate_id] = self.versions.get(event.aggregate_id, 0) + 1
        return received(event, stream_seq=self.seq, aggregate_version=self.versions[event.aggregate_id])

    def create(self, channel: str) -> ReceivedEvent:
        return self._event(channel, ChannelCreated(channel_id=channel, creator_id="u1"))

    def post(self, channel: str, age_days: float, body: str) -> ReceivedEvent:
        self.channel_seqs[channel] = self.channel_seqs.get(channel, 0) + 1
        sent = Timestamp()
        sent.FromNanoseconds(NOW_NS - int(age_days * NS_PER_DAY))
        payload = MessagePosted(
            channel_id=channel,
            message_id=f"{channel}-{self.channel_seqs[channel]}",
            sender_id="u1",
            sender_name="u",
            channel_seq=self.channel_seqs[channel],
            body=body,
            sent_at=sent,
        )
        return self._event(channel, payload)

    def edit(self, channel: str, channel_seq: int, body: str) -> ReceivedEvent:
        return self._event(
            channel, MessageEdited(channel_id=channel, channel_seq=channel_seq, body=body, editor_id="u1")
        )


async def bodies(archive: SqlEventArchive, channel: str) -> list[str]:
    messages, _ = await archive.channel_history(channel, after_seq=0, limit=100)
    return [m.body for m in messages]


def expiry_markers(policy: RetentionPolicy, channel_seqs: list[int], *, now_ns: int = NOW_NS) -> list[NewEvent]:
    """The retention job's facts, and the markers messaging appends for them (storage_due.py)."""
    markers = []
    for marker, fact in expiry_facts(policy, channel_seqs, sent_before_ns=now_ns - policy.days * NS_PER_DAY):
        assert isinstance(fact.payload, RetentionDue)
        expired = MessagesExpired(
            channel_id=fact.payload.channel_id,
            channel_seqs=fact.payload.channel_seqs,
            retention_days=fact.payload.retention_days,
        )
        markers.append(
            NewEvent(
                aggregate_type=marker.aggregate_type,
                aggregate_id=marker.aggregate_id,
                payload=expired,
                actor="service:messaging",
                event_id=marker.event_id,
            )
        )
    return markers


async def expire(archive: SqlEventArchive, feed: Channels, *, now_ns: int) -> list[ReceivedEvent]:
    """The retention job's decision, and messaging's markers as the archive then receives them."""
    markers = []
    for policy in await archive.retention_policies():
        expired = await archive.sent_before(policy.channel_id, now_ns - policy.days * NS_PER_DAY)
        markers.extend(feed.appended(marker) for marker in expiry_markers(policy, expired, now_ns=now_ns))
    await archive.archive(CONSUMER, markers)
    return markers


def queued(conn: Connection) -> list[tuple[int, str]]:
    return [(r.stream_seq, r.reason) for r in conn.execute(select(log_deletions).order_by(log_deletions.c.stream_seq))]


def key_ids(conn: Connection) -> dict[int, str]:
    return {row.stream_seq: row.key_id for row in conn.execute(select(events.c.stream_seq, events.c.key_id))}


async def test_retention_removes_old_content_of_that_channel_only(archive: SqlEventArchive) -> None:
    feed = Channels()
    batch = [
        feed.create("short"),
        feed.create("forever"),
        feed.post("short", 40, "short old"),
        feed.post("forever", 40, "forever old"),
        feed.post("short", 29, "short recent"),
        feed.post("short", 0.5, "short today"),
        feed.edit("short", 1, "short old, edited today"),  # still expires: the message is 40 days old
    ]
    await archive.archive(CONSUMER, batch)
    await archive.set_retention("short", 30, set_by="platform")

    (marker,) = await expire(archive, feed, now_ns=NOW_NS)
    expired = MessagesExpired.FromString(marker.envelope.payload)
    assert (list(expired.channel_seqs), expired.retention_days) == ([1], 30)

    assert await bodies(archive, "short") == ["short recent", "short today"]
    assert await bodies(archive, "forever") == ["forever old"]
    stored, _ = await archive.stream_events("MSG", after_seq=0, limit=100)
    assert [e.stream_seq for e in stored] == [1, 2, 3, 4, 5, 6, 7, 8]  # the log keeps every position
    keys = await archive.run("key_ids", key_ids)
    assert [seq for seq, key in sorted(keys.items()) if key == EXPIRED] == [3, 7]  # the post and its edit
    # Both texts wait for their deletion from the log; the marker keeps the fact.
    assert await archive.run("queued", queued) == [(3, "expired"), (7, "expired")]
    # A redelivered marker or post changes nothing; a run finds nothing more to expire.
    assert await archive.archive(CONSUMER, [marker, batch[2]]) == 0
    assert await expire(archive, feed, now_ns=NOW_NS) == []
    assert await bodies(archive, "short") == ["short recent", "short today"]
    assert await archive.run("queued", queued) == [(3, "expired"), (7, "expired")]
    # Time passes: the next run takes what has aged past the policy since.
    assert len(await expire(archive, feed, now_ns=NOW_NS + 2 * NS_PER_DAY)) == 1
    assert await bodies(archive, "short") == ["short today"]
    await archive.set_retention("short", 0, set_by="platform")  # policy removed: keep forever
    assert await expire(archive, feed, now_ns=NOW_NS + 100 * NS_PER_DAY) == []
    assert await bodies(archive, "short") == ["short today"]


async def test_an_edit_archived_after_its_expiry_loses_its_text_too(archive: SqlEventArchive) -> None:
    feed = Channels()
    created, old_post, late_edit = feed.create("c"), feed.post("c", 40, "old"), feed.edit("c", 1, "old, edited")
    (marker,) = [feed.appended(m) for m in expiry_markers(RetentionPolicy("c", 30), [1])]
    await archive.archive(CONSUMER, [created, old_post, marker])  # the edit is retried after the marker
    await archive.archive(CONSUMER, [late_edit])
    assert await bodies(archive, "c") == []
    assert (await archive.run("key_ids", key_ids))[late_edit.stream_seq] == EXPIRED
    assert await archive.run("queued", queued) == [(2, "expired"), (3, "expired")]


def test_a_long_run_is_split_into_facts_with_ids_from_their_numbers() -> None:
    policy = RetentionPolicy("c", 30)
    due = expiry_facts(policy, list(range(1, 2 * MARKER_SEQS + 2)), sent_before_ns=NOW_NS)
    payloads = [fact.payload for _, fact in due]
    sizes = [len(p.channel_seqs) for p in payloads if isinstance(p, RetentionDue)]
    assert sizes == [MARKER_SEQS, MARKER_SEQS, 1]
    assert all(p.sent_before_unix_ns == NOW_NS for p in payloads if isinstance(p, RetentionDue))
    ids = [marker.event_id for marker, _ in due] + [fact.event_id for _, fact in due]
    assert len(set(ids)) == 6
    assert all(len(i) <= 64 for i in ids)  # the archive's event_id column
    again = expiry_facts(policy, list(range(1, 2 * MARKER_SEQS + 2)), sent_before_ns=NOW_NS + 1)
    assert [m.event_id for m, _ in again] == [m.event_id for m, _ in due]  # a retried run: nothing twice
    assert [f.event_id for _, f in again] == [f.event_id for _, f in due]
    other = expiry_facts(RetentionPolicy("other", 30), [1], sent_before_ns=NOW_NS)
    assert other[0][0].event_id != expiry_facts(policy, [1], sent_before_ns=NOW_NS)[0][0].event_id


def test_residency_binds_on_first_start_and_refuses_elsewhere(database_url: str) -> None:
    engine = open_engine(database_url)
    try:
        upgrade_to_head(engine)
        acme = ResidencyBinding("acme", location_of(database_url))

        with engine.begin() as conn:
            enforce_in_database(conn, acme, database_url)
        with engine.begin() as conn:
            enforce_in_database(conn, acme, database_url)  # a restart at the same place is fine
            enforce_in_database(conn, None, database_url)  # so is a start without the setting
            assert conn.execute(select(residency.c.organisation)).scalars().all() == ["acme"]

        globex_refused = pytest.raises(ResidencyViolation, match="belongs to organisation 'acme', not 'globex'")
        with globex_refused, engine.begin() as conn:
            enforce_in_database(conn, ResidencyBinding("globex", location_of(database_url)), database_url)
        elsewhere = ResidencyBinding("acme", "postgresql+psycopg://postgres@eu-db.example:5432/parley")
        with pytest.raises(ResidencyViolation, match="bound to postgresql"), engine.begin() as conn:
            enforce_in_database(conn, elsewhere, database_url)
        # The same database opened through another location (a copy moved elsewhere).
        with pytest.raises(ResidencyViolation, match="refusing to write it elsewhere"), engine.begin() as conn:
            enforce_in_database(conn, None, database_url + ("&x=1" if "?" in database_url else "?x=1"))
        # A restore moves data only for its own organisation, to that organisation's configured location.
        with pytest.raises(ResidencyViolation, match="set PARLEY_STORAGE_ORGANISATION"), engine.begin() as conn:
            rebind_restored(conn, None, database_url)
        with engine.begin() as conn:
            rebind_restored(conn, acme, database_url)
            assert conn.execute(select(residency.c.location)).scalars().all() == [acme.location]
    finally:
        engine.dispose()


def test_password_is_not_part_of_the_location() -> None:
    assert location_of("postgresql+psycopg://app:s3cret@db:5432/parley") == "postgresql+psycopg://app@db:5432/parley"
    with pytest.raises(ResidencyViolation, match="or neither"):
        ResidencyBinding.from_settings(StorageSettings(organisation="acme"))
    assert ResidencyBinding.from_settings(StorageSettings()) is None


def test_service_refuses_to_start_on_a_database_outside_the_binding(
    tmp_path: Path, start_storage: Callable[..., CompletedProcess[str]]
) -> None:
    url = f"sqlite:///{tmp_path / 'archive.db'}"
    result = start_storage(
        url,
        PARLEY_STORAGE_ORGANISATION="acme",
        PARLEY_STORAGE_BOUND_DATABASE_URL="postgresql+psycopg://postgres@eu-db.example:5432/parley",
    )
    assert result.returncode == 78
    assert "refusing to write its data to sqlite" in result.stderr
    assert "Traceback" not in result.stderr


def test_service_refuses_a_database_bound_to_another_organisation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_storage: Callable[..., CompletedProcess[str]]
) -> None:
    url = f"sqlite:///{tmp_path / 'archive.db'}"
    engine = open_engine(url)
    upgrade_to_head(engine)
    with engine.begin() as conn:
        enforce_in_database(conn, ResidencyBinding("acme", location_of(url)), url)
    engine.dispose()

    refused = start_storage(url, PARLEY_STORAGE_ORGANISATION="globex", PARLEY_STORAGE_BOUND_DATABASE_URL=url)
    assert refused.returncode == 78
    assert "belongs to organisation 'acme', not 'globex'" in refused.stderr
    assert "Traceback" not in refused.stderr
    # The same pre-flight check, in process, passes for the organisation the database belongs to.
    monkeypatch.setenv("PARLEY_STORAGE_ORGANISATION", "acme")
    monkeypatch.setenv("PARLEY_STORAGE_BOUND_DATABASE_URL", url)
    engine = open_engine(url)
    try:
        check_residency(url, engine)
        monkeypatch.setenv("PARLEY_STORAGE_ORGANISATION", "globex")
        with pytest.raises(ResidencyViolation):
            check_residency(url, engine)
    finally:
        engine.dispose()
