"""Two storage instances on one database and one keyring: an erasure or a KEK rotation by one
holds in the other, through the bus (cache revocation) and the keyring file (never clobbered)."""

from __future__ import annotations

import json
from pathlib import Path

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from parley.auth.v1.events_pb2 import UserRegistered
from parley.messaging.v1.events_pb2 import ChannelCreated, MessagePosted
from parley.storage.v1.events_pb2 import UserDataErased

from parley_core.bus import EventBus, ReceivedEvent
from parley_core.envelope import NewEvent, seal
from parley_core.topology import PLATFORM_USER, STREAMS, channel_subject, privacy_subject, user_subject
from parley_storage.archive import SqlEventArchive
from parley_storage.datakeys import DataKeys
from parley_storage.erasures import follow_erasures
from parley_storage.kek import FileKeyring
from parley_testing.nats import NatsTestServer
from parley_testing.waiting import eventually

ALICE, BOB = "user-alice", "user-bob"


def delivered(stream: str, seq: int, aggregate_type: str, aggregate_id: str, payload: Message) -> ReceivedEvent:
    envelope = seal(
        NewEvent(aggregate_type=aggregate_type, aggregate_id=aggregate_id, payload=payload, actor=ALICE),
        aggregate_version=seq,
        producer="test@0",
        trace_context={},
    )
    subject = channel_subject(aggregate_id) if aggregate_type == "channel" else user_subject(aggregate_id)
    return ReceivedEvent(envelope, subject, stream, seq, 1, {})


def post(seq: int, channel: str, sender: str, body: str) -> ReceivedEvent:
    sent = Timestamp()
    sent.FromNanoseconds(1_700_000_000_000_000_000 + seq)
    payload = MessagePosted(
        channel_id=channel,
        message_id=f"{channel}-{seq}",
        sender_id=sender,
        sender_name=sender.removeprefix("user-"),
        channel_seq=seq - 1,
        body=body,
        sent_at=sent,
    )
    return delivered("MSG", seq, "channel", channel, payload)


async def bodies(archive: SqlEventArchive, channel: str) -> list[tuple[str, bool]]:
    messages, _ = await archive.channel_history(channel, after_seq=0, limit=50)
    return [(m.body, m.erased) for m in messages]


async def test_an_erasure_and_a_rotation_by_one_instance_hold_in_the_other(
    nats_server: NatsTestServer, archive: SqlEventArchive, another_instance: SqlEventArchive, tmp_path: Path
) -> None:
    keyring = tmp_path / "kek.json"
    first, second = archive, another_instance
    platform = EventBus(await nats_server.connect(PLATFORM_USER), service=PLATFORM_USER, producer="test")
    await platform.ensure_streams(STREAMS)
    buses = [
        EventBus(await nats_server.connect("storage", name=f"storage-{n}"), service="storage", producer=f"storage@{n}")
        for n in (1, 2)
    ]
    for bus, instance in zip(buses, (first, second), strict=True):
        await follow_erasures(bus, instance.keys)
    await first.archive(
        "storage-archive-auth",
        [
            delivered("AUTH", 1, "user", ALICE, UserRegistered(user_id=ALICE, username="alice")),
            delivered("AUTH", 2, "user", BOB, UserRegistered(user_id=BOB, username="bob")),
        ],
    )
    created = delivered("MSG", 1, "channel", "general", ChannelCreated(channel_id="general", creator_id=ALICE))
    await first.archive(
        "storage-archive-msg", [created, post(2, "general", ALICE, "alice 1"), post(3, "general", BOB, "bob 1")]
    )
    # The second instance has alice's key in its cache now.
    assert await bodies(second, "general") == [("alice 1", False), ("bob 1", False)]

    # The first instance erases alice as EraseUserData does: audited event first, then the shred.
    live = await first.live_user_keys(ALICE)
    erased = NewEvent(
        aggregate_type="privacy",
        aggregate_id=ALICE,
        payload=UserDataErased(user_id=ALICE, erased_by=PLATFORM_USER, destroyed_key_ids=live),
        actor=PLATFORM_USER,
    )
    await buses[0].append(privacy_subject(ALICE), erased, aggregate_version=1, expected_last_subject_seq=0)
    await first.shred_user(ALICE)

    async def erased_in_second() -> bool | None:
        return True if await bodies(second, "general") == [("", True), ("bob 1", False)] else None

    await eventually(erased_in_second, what="the second instance to stop reading alice's messages")

    # The second instance writes a new data key into the keyring after the rotation: it must
    # merge with the file as it is now, not put back the KEK and key the erasure destroyed.
    ring_after_erasure = json.loads(keyring.read_text())
    await second.archive(
        "storage-archive-msg",
        [
            delivered("MSG", 4, "channel", "random", ChannelCreated(channel_id="random", creator_id=BOB)),
            post(5, "random", BOB, "bob 2"),
        ],
    )
    ring = json.loads(keyring.read_text())
    assert set(ring["keys"]) == set(ring_after_erasure["keys"])
    assert set(ring["data_keys"]) > set(ring_after_erasure["data_keys"])  # the new channel's key
    assert live[0] not in ring["data_keys"]
    assert await bodies(first, "random") == [("bob 2", False)]  # the first reads the second's new key

    # A KEK rotation by the first: the second still reads everything, and a key it creates
    # afterwards is wrapped under the new KEK (a fresh process on either side opens it).
    rotation = await first.rotate_kek()
    await second.archive(
        "storage-archive-msg",
        [
            delivered("MSG", 6, "channel", "third", ChannelCreated(channel_id="third", creator_id=BOB)),
            post(7, "third", BOB, "bob 3"),
        ],
    )
    ring = json.loads(keyring.read_text())
    assert list(ring["keys"]) == [rotation.new_kek_id]
    assert {entry["kek"] for entry in ring["data_keys"].values()} == {rotation.new_kek_id}
    assert await bodies(second, "general") == [("", True), ("bob 1", False)]
    fresh = SqlEventArchive(first.engine, DataKeys(FileKeyring.load_or_create(keyring)))
    assert await bodies(fresh, "third") == [("bob 3", False)]
    assert await bodies(fresh, "general") == [("", True), ("bob 1", False)]
