"""SqlEventArchive against real databases: projections, paging, exactly-once and atomic batches.

No broker here: events are sealed exactly as the bus seals them and handed over as the durable
consumer hands them, with the stream sequences JetStream would have given them.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

import pytest
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from parley.auth.v1.events_pb2 import AccountErased, UserRegistered
from parley.common.v1.envelope_pb2 import EventEnvelope
from parley.messaging.v1.events_pb2 import ChannelCreated, MemberJoined, MessagePosted, MessagesErased, MessagesExpired
from sqlalchemy import Connection, event, select
from sqlalchemy.exc import DBAPIError

from parley_core.bus import ReceivedEvent
from parley_core.envelope import NewEvent, seal
from parley_core.markers import MAX_EVENT_ID, Marker, account_erasure_marker, channel_erasure_marker
from parley_core.topology import channel_subject, user_subject, username_subject
from parley_storage.archive import RetentionPolicy, SqlEventArchive
from parley_storage.retention import expiry_facts
from parley_storage.schema import consumer_positions, events
from parley_testing.events import received

MSG_CONSUMER = "storage-archive-msg"
AUTH_CONSUMER = "storage-archive-auth"
SENT_AT_NS = 1_700_000_000_000_000_000


@dataclass
class StreamLog:
    """Appends events the way JetStream does: one sequence per stream, one version per aggregate."""

    stream: str
    last_seq: int = 0
    versions: Counter[str] = field(default_factory=Counter)

    def append(
        self, aggregate_type: str, aggregate_id: str, payload: Message, *, aggregate_version: int | None = None
    ) -> ReceivedEvent:
        self.versions[aggregate_id] += 1
        envelope = seal(
            NewEvent(aggregate_type=aggregate_type, aggregate_id=aggregate_id, payload=payload, actor="user-alice"),
            aggregate_version=aggregate_version or self.versions[aggregate_id],
            producer="test@0",
            trace_context={},
        )
        return self.deliver(envelope)

    def deliver(self, envelope: EventEnvelope) -> ReceivedEvent:
        self.last_seq += 1
        subject = (
            channel_subject(envelope.aggregate_id)
            if envelope.aggregate_type == "channel"
            else user_subject(envelope.aggregate_id)
        )
        return ReceivedEvent(
            envelope=envelope,
            subject=subject,
            stream=self.stream,
            stream_seq=self.last_seq,
            num_delivered=1,
            headers={},
        )


@dataclass
class Channel:
    """One channel's events on the MSG stream, numbered as the messaging service numbers them."""

    log: StreamLog
    channel_id: str
    messages: int = 0

    def create(self, creator_id: str) -> ReceivedEvent:
        payload = ChannelCreated(channel_id=self.channel_id, name=f"#{self.channel_id}", creator_id=creator_id)
        return self.log.append("channel", self.channel_id, payload)

    def join(self, user_id: str) -> ReceivedEvent:
        return self.log.append("channel", self.channel_id, MemberJoined(channel_id=self.channel_id, user_id=user_id))

    def post(self, sender_id: str, body: str, *, aggregate_version: int | None = None) -> ReceivedEvent:
        self.messages += 1
        sent_at = Timestamp()
        sent_at.FromNanoseconds(SENT_AT_NS + self.messages)
        payload = MessagePosted(
            channel_id=self.channel_id,
            message_id=f"{self.channel_id}-m{self.messages}",
            sender_id=sender_id,
            sender_name=sender_id.removeprefix("user-"),
            channel_seq=self.messages,
            body=body,
            idempotency_key=f"key-{self.messages}",
            sent_at=sent_at,
        )
        return self.log.append("channel", self.channel_id, payload, aggregate_version=aggregate_version)


def msg_stream() -> StreamLog:
    return StreamLog("MSG")


async def position(archive: SqlEventArchive, consumer: str) -> int | None:
    def work(conn: Connection) -> int | None:
        query = select(consumer_positions.c.last_seq).where(consumer_positions.c.consumer == consumer)
        return conn.execute(query).scalar_one_or_none()

    return await archive.run("test_position", work)


async def stored_seqs(archive: SqlEventArchive, stream: str) -> list[int]:
    def work(conn: Connection) -> list[int]:
        query = select(events.c.stream_seq).where(events.c.stream == stream).order_by(events.c.stream_seq)
        return list(conn.execute(query).scalars())

    return await archive.run("test_stored_seqs", work)


async def history_seqs(archive: SqlEventArchive, channel_id: str) -> list[int]:
    messages, has_more = await archive.channel_history(channel_id, after_seq=0, limit=1000)
    assert not has_more
    return [m.channel_seq for m in messages]


async def test_batch_is_archived_with_its_projections(archive: SqlEventArchive) -> None:
    log = msg_stream()
    general, random = Channel(log, "general"), Channel(log, "random")
    batch = [
        general.create("user-alice"),
        general.join("user-bob"),
        general.post("user-alice", "hello"),
        random.create("user-carol"),
        general.post("user-bob", "hi alice"),
        random.post("user-carol", "anyone here?"),
        general.post("user-alice", "welcome ✓"),
    ]

    assert await archive.archive(MSG_CONSUMER, batch) == len(batch)

    assert await archive.count_events("MSG") == len(batch)
    assert await archive.count_events("AUTH") == 0
    assert await position(archive, MSG_CONSUMER) == log.last_seq
    assert await archive.is_member("general", "user-alice")
    assert await archive.is_member("general", "user-bob")
    assert not await archive.is_member("general", "user-carol")
    assert await archive.is_member("random", "user-carol")
    assert not await archive.is_member("random", "user-alice")
    assert not await archive.is_member("nowhere", "user-alice")

    messages, has_more = await archive.channel_history("general", after_seq=0, limit=100)
    assert not has_more
    assert [(m.channel_seq, m.sender_id, m.sender_name, m.body) for m in messages] == [
        (1, "user-alice", "alice", "hello"),
        (2, "user-bob", "bob", "hi alice"),
        (3, "user-alice", "alice", "welcome ✓"),
    ]
    assert [m.message_id for m in messages] == ["general-m1", "general-m2", "general-m3"]
    assert [m.sent_at_ns for m in messages] == [SENT_AT_NS + 1, SENT_AT_NS + 2, SENT_AT_NS + 3]
    assert all(m.channel_id == "general" for m in messages)
    assert [m.body for m in (await archive.channel_history("random", after_seq=0, limit=100))[0]] == ["anyone here?"]


async def test_a_batch_of_posts_costs_the_same_statements_whatever_its_size(archive: SqlEventArchive) -> None:
    """The posts of a batch are written together (one statement per table), so a batch of fifty
    costs no more statements than a batch of five."""
    log = msg_stream()
    general = Channel(log, "general")
    # The first post also makes the sender's data key: that is not the figure here.
    await archive.archive(MSG_CONSUMER, [general.create("user-alice"), general.post("user-alice", "first")])
    statements = 0

    def count(*_: object) -> None:
        nonlocal statements
        statements += 1

    event.listen(archive.engine, "before_cursor_execute", count)
    try:
        await archive.archive(MSG_CONSUMER, [general.post("user-alice", f"small {n}") for n in range(5)])
        small, statements = statements, 0
        await archive.archive(MSG_CONSUMER, [general.post("user-alice", f"large {n}") for n in range(50)])
        large = statements
    finally:
        event.remove(archive.engine, "before_cursor_execute", count)

    assert large == small
    assert await history_seqs(archive, "general") == list(range(1, 57))
    assert await position(archive, MSG_CONSUMER) == log.last_seq


async def test_a_batch_of_new_posts_takes_six_statements(archive: SqlEventArchive) -> None:
    """The usual batch, wholly past what is archived: the consumer's position, the stream's newest
    archived sequence, the events, their messages, their channels' post counts (the read model's
    newest message number), the new position; no look-up of which events are archived already
    (none can be), which was one more statement on every batch."""
    log = msg_stream()
    general = Channel(log, "general")
    await archive.archive(MSG_CONSUMER, [general.create("user-alice"), general.post("user-alice", "first")])
    statements: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(statement.split(maxsplit=1)[0].upper())

    event.listen(archive.engine, "before_cursor_execute", record)
    try:
        await archive.archive(MSG_CONSUMER, [general.post("user-alice", f"new {n}") for n in range(3)])
    finally:
        event.remove(archive.engine, "before_cursor_execute", record)

    assert statements == ["SELECT", "SELECT", "INSERT", "INSERT", "UPDATE", "UPDATE"]
    assert await history_seqs(archive, "general") == [1, 2, 3, 4]
    assert await position(archive, MSG_CONSUMER) == log.last_seq


async def test_events_are_stored_sealed_and_open_to_the_original(archive: SqlEventArchive) -> None:
    log = msg_stream()
    general = Channel(log, "general")
    batch = [general.create("user-alice"), general.post("user-alice", "hello")]

    await archive.archive(MSG_CONSUMER, batch)

    def work(conn: Connection) -> list[tuple[tuple[object, ...], bytes]]:
        rows = conn.execute(select(events).order_by(events.c.stream_seq))
        return [(tuple(row)[1:-2], bytes(row.envelope)) for row in rows]

    rows = await archive.run("test_rows", work)
    assert len(rows) == 2
    for (columns, sealed), item in zip(rows, batch, strict=True):
        env = item.envelope
        assert columns == (
            "MSG",
            item.stream_seq,
            item.subject,
            env.event_id,
            env.event_type,
            env.schema_version,
            "channel",
            "general",
            env.aggregate_version,
            env.occurred_at.ToNanoseconds(),
            "user-alice",
            "test@0",
        )
        assert env.SerializeToString() not in sealed
        assert env.payload not in sealed
    assert b"hello" not in rows[1][1]
    stored, has_more = await archive.stream_events("MSG", after_seq=0, limit=10)
    assert not has_more
    assert [s.envelope for s in stored] == [item.envelope for item in batch]


async def test_history_pages_in_channel_order(archive: SqlEventArchive) -> None:
    log = msg_stream()
    general = Channel(log, "general")
    batch = [general.create("user-alice"), *(general.post("user-alice", f"message {n}") for n in range(1, 8))]
    # The order a batch arrives in is not the order it is stored in.
    await archive.archive(MSG_CONSUMER, list(reversed(batch)))

    pages = []
    after = 0
    while True:
        messages, has_more = await archive.channel_history("general", after_seq=after, limit=3)
        pages.append(([m.channel_seq for m in messages], has_more))
        if not has_more:
            break
        after = messages[-1].channel_seq
    assert pages == [([1, 2, 3], True), ([4, 5, 6], True), ([7], False)]

    assert [m.body for m in (await archive.channel_history("general", after_seq=0, limit=7))[0]][-1] == "message 7"
    assert (await archive.channel_history("general", after_seq=0, limit=7))[1] is False
    assert (await archive.channel_history("general", after_seq=0, limit=6))[1] is True
    assert (await archive.channel_history("general", after_seq=4, limit=3))[1] is False
    assert await archive.channel_history("general", after_seq=7, limit=3) == ([], False)
    assert await archive.channel_history("elsewhere", after_seq=0, limit=3) == ([], False)


async def test_redelivered_batch_is_stored_once(archive: SqlEventArchive) -> None:
    log = msg_stream()
    general = Channel(log, "general")
    events_ = [general.create("user-alice"), *(general.post("user-alice", f"m{n}") for n in range(1, 8))]
    first, overlapping = events_[:5], events_[2:]

    assert await archive.archive(MSG_CONSUMER, first) == 5
    assert await archive.archive(MSG_CONSUMER, first) == 0
    assert await archive.count_events("MSG") == 5
    assert await position(archive, MSG_CONSUMER) == 5

    assert await archive.archive(MSG_CONSUMER, overlapping) == 3
    assert await archive.archive(MSG_CONSUMER, overlapping) == 0
    assert await archive.archive(MSG_CONSUMER, events_) == 0

    assert await archive.count_events("MSG") == 8
    assert await stored_seqs(archive, "MSG") == list(range(1, 9))
    assert await position(archive, MSG_CONSUMER) == 8
    assert await history_seqs(archive, "general") == list(range(1, 8))


async def test_event_redelivered_after_later_ones_is_still_archived(archive: SqlEventArchive) -> None:
    """The consumer retries a failed event with a delayed nak while later events go through."""
    log = msg_stream()
    general = Channel(log, "general")
    created, first, second, third = general.create("user-alice"), *(general.post("user-bob", b) for b in "abc")

    assert await archive.archive(MSG_CONSUMER, [created, first]) == 2
    assert await archive.archive(MSG_CONSUMER, [third]) == 1
    assert await position(archive, MSG_CONSUMER) == third.stream_seq

    assert await archive.archive(MSG_CONSUMER, [second]) == 1
    assert await archive.archive(MSG_CONSUMER, [second]) == 0

    assert await stored_seqs(archive, "MSG") == [1, 2, 3, 4]
    assert await position(archive, MSG_CONSUMER) == third.stream_seq
    assert await history_seqs(archive, "general") == [1, 2, 3]


async def test_a_parked_event_moves_the_position_forward_only(archive: SqlEventArchive) -> None:
    """A parked event is consumed: the position passes it (made if none), and never goes back."""
    log = msg_stream()
    general = Channel(log, "general")
    created, first, second = general.create("user-alice"), general.post("user-bob", "a"), general.post("user-bob", "b")

    await archive.pass_parked(MSG_CONSUMER, "MSG", created.stream_seq)  # the consumer's first event
    assert await position(archive, MSG_CONSUMER) == created.stream_seq
    assert await archive.archive(MSG_CONSUMER, [first]) == 1
    await archive.pass_parked(MSG_CONSUMER, "MSG", second.stream_seq)
    assert await position(archive, MSG_CONSUMER) == second.stream_seq
    await archive.pass_parked(MSG_CONSUMER, "MSG", created.stream_seq)  # a late report: no step back
    assert await position(archive, MSG_CONSUMER) == second.stream_seq
    assert await stored_seqs(archive, "MSG") == [first.stream_seq]  # parked, never archived


async def test_consumers_keep_independent_positions(archive: SqlEventArchive) -> None:
    msg, auth = msg_stream(), StreamLog("AUTH")
    general = Channel(msg, "general")
    msg_batch = [general.create("user-alice"), *(general.post("user-alice", f"m{n}") for n in range(4))]
    auth_batch = [
        auth.append("user", f"user-{name}", UserRegistered(user_id=f"user-{name}", username=name, role="member"))
        for name in ("alice", "bob", "carol")
    ]

    assert await archive.archive(AUTH_CONSUMER, auth_batch) == 3
    assert await archive.archive(MSG_CONSUMER, msg_batch[:2]) == 2
    assert await archive.archive(MSG_CONSUMER, msg_batch) == 3  # same sequences as AUTH's, another stream

    assert await position(archive, AUTH_CONSUMER) == 3
    assert await position(archive, MSG_CONSUMER) == 5
    assert await archive.count_events("AUTH") == 3
    assert await archive.count_events("MSG") == 5

    assert await archive.archive(AUTH_CONSUMER, auth_batch) == 0
    next_user = auth.append("user", "user-dave", UserRegistered(user_id="user-dave", username="dave"))
    assert await archive.archive(AUTH_CONSUMER, [next_user]) == 1
    assert await position(archive, AUTH_CONSUMER) == 4
    assert await position(archive, MSG_CONSUMER) == 5
    assert await stored_seqs(archive, "AUTH") == [1, 2, 3, 4]


async def test_unknown_event_type_is_archived_verbatim(archive: SqlEventArchive) -> None:
    log = msg_stream()
    general = Channel(log, "general")
    created = general.create("user-alice")
    from_the_future = EventEnvelope(
        event_id="evt-nope",
        event_type="parley.test.v1.Nope",
        schema_version=3,
        aggregate_type="channel",
        aggregate_id="general",
        aggregate_version=2,
        actor="user-alice",
        payload=b"\x0a\x03new\x10\x07",
        producer="messaging@9.9",
    )
    from_the_future.occurred_at.FromNanoseconds(SENT_AT_NS)
    unknown = log.deliver(from_the_future)
    log.versions["general"] += 1
    posted = general.post("user-alice", "still here")

    assert await archive.archive(MSG_CONSUMER, [created, unknown, posted]) == 3

    stored, _ = await archive.stream_events("MSG", after_seq=unknown.stream_seq - 1, limit=1)
    assert stored[0].event_type == "parley.test.v1.Nope"
    assert stored[0].envelope == from_the_future
    assert stored[0].envelope.payload == b"\x0a\x03new\x10\x07"
    assert await position(archive, MSG_CONSUMER) == 3
    assert await history_seqs(archive, "general") == [1]
    assert await archive.is_member("general", "user-alice")


async def test_failed_batch_leaves_nothing_half_written(archive: SqlEventArchive) -> None:
    log = msg_stream()
    general = Channel(log, "general")
    assert await archive.archive(MSG_CONSUMER, [general.create("user-alice"), general.post("user-alice", "one")]) == 2

    # A version past the signed 64-bit range is refused by both databases: a real fault, mid-batch,
    # after the batch's first events were already written in the same transaction.
    joined = general.join("user-bob")
    two = general.post("user-alice", "two")
    poison = general.post("user-alice", "three", aggregate_version=2**63)
    four = general.post("user-alice", "four")
    batch = [joined, two, poison, four]

    with pytest.raises((DBAPIError, OverflowError)):
        await archive.archive(MSG_CONSUMER, batch)

    assert await archive.count_events("MSG") == 2
    assert await stored_seqs(archive, "MSG") == [1, 2]
    assert await position(archive, MSG_CONSUMER) == 2
    assert await history_seqs(archive, "general") == [1]
    assert not await archive.is_member("general", "user-bob")

    # What the durable consumer does next: the same events one by one, the poison one failing alone.
    for item in batch:
        if item is poison:
            with pytest.raises((DBAPIError, OverflowError)):
                await archive.archive(MSG_CONSUMER, [item])
        else:
            assert await archive.archive(MSG_CONSUMER, [item]) == 1

    assert await stored_seqs(archive, "MSG") == [1, 2, 3, 4, 6]
    assert await position(archive, MSG_CONSUMER) == 6
    assert await history_seqs(archive, "general") == [1, 2, 4]
    assert await archive.is_member("general", "user-bob")


async def test_empty_batch_changes_nothing(archive: SqlEventArchive) -> None:
    assert await archive.archive(MSG_CONSUMER, []) == 0
    assert await position(archive, MSG_CONSUMER) is None
    assert await archive.count_events("MSG") == 0


async def test_event_delivered_twice_in_one_batch_is_stored_once(archive: SqlEventArchive) -> None:
    log = msg_stream()
    general = Channel(log, "general")
    created, posted = general.create("user-alice"), general.post("user-alice", "once")

    assert await archive.archive(MSG_CONSUMER, [created, posted, posted]) == 2
    assert await stored_seqs(archive, "MSG") == [1, 2]
    assert await history_seqs(archive, "general") == [1]


async def test_batch_from_two_streams_is_refused(archive: SqlEventArchive) -> None:
    general = Channel(msg_stream(), "general")
    user = StreamLog("AUTH").append("user", "user-alice", UserRegistered(user_id="user-alice", username="alice"))

    with pytest.raises(ValueError, match="one stream"):
        await archive.archive(MSG_CONSUMER, [general.create("user-alice"), user])
    assert await archive.count_events("MSG") == 0
    assert await archive.count_events("AUTH") == 0


async def test_the_markers_and_their_due_facts_fit_the_archive_and_are_found(archive: SqlEventArchive) -> None:
    """Markers (appended by their owners) and due facts (storage's) have ids of their own making;
    PostgreSQL enforces the column's width. Storage finds a marker by its aggregate and id."""
    user, channel = "u" * 32, "c" * 32  # ids as long as the services make them
    username_key = hashlib.sha256(b"alice").hexdigest()
    erased, named = channel_erasure_marker(user, channel), account_erasure_marker(user, username_key)
    [(expired, fact)] = expiry_facts(RetentionPolicy(channel, 30), [1, 2], sent_before_ns=1)

    def as_owner_appends(marker: Marker, payload: Message) -> NewEvent:
        return NewEvent(marker.aggregate_type, marker.aggregate_id, payload, actor="owner", event_id=marker.event_id)

    markers = [
        received(as_owner_appends(erased, MessagesErased(channel_id=channel, user_id=user)), stream_seq=1),
        received(
            as_owner_appends(named, AccountErased(user_id=user)),
            stream_seq=2,
            stream="AUTH",
            subject=username_subject(username_key),
        ),
        received(as_owner_appends(expired, MessagesExpired(channel_id=channel, channel_seqs=[1, 2])), stream_seq=3),
    ]
    ids = [m.envelope.event_id for m in markers] + [fact.event_id, erased.due_event_id, named.due_event_id]
    assert all(len(i) <= MAX_EVENT_ID for i in ids)

    assert await archive.holds_markers([erased, named, expired]) == set()
    assert await archive.archive("storage-archive-msg", [m for m in markers if m.stream == "MSG"]) == 2
    assert await archive.archive("storage-archive-auth", [m for m in markers if m.stream == "AUTH"]) == 1
    assert await archive.holds_markers([erased, named, expired]) == {erased, named, expired}
    # The same id on another aggregate is not the marker.
    assert await archive.holds_markers([Marker("channel", "elsewhere", erased.event_id)]) == set()
