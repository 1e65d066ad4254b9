"""Encryption at rest, crypto-shredding, key rotation and export, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import stat
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from parley.auth.v1.events_pb2 import UserRegistered
from parley.messaging.v1.events_pb2 import ChannelCreated, MemberJoined, MessageEdited
from sqlalchemy import Connection, select, update

from parley_core.bus import ReceivedEvent
from parley_core.envelope import NewEvent, seal
from parley_core.topology import channel_subject, user_subject
from parley_storage.archive import SqlEventArchive, open_engine
from parley_storage.datakeys import DataKeys
from parley_storage.export import build_export
from parley_storage.kek import FileKeyring, Rotation, UnknownKek, WrappedKey, data_key_context
from parley_storage.migrate import upgrade_to_head
from parley_storage.schema import data_keys, events
from parley_storage.sealing import RecordUnreadable
from parley_testing.events import message_posted

ALICE, BOB = "user-alice", "user-bob"


class Feed:
    """Events as JetStream delivers them: one sequence per stream, one version per aggregate."""

    def __init__(self) -> None:
        self.seqs: Counter[str] = Counter()
        self.versions: Counter[str] = Counter()
        self.channel_seq = 0

    def event(self, stream: str, aggregate_type: str, aggregate_id: str, payload: Message, actor: str) -> ReceivedEvent:
        self.seqs[stream] += 1
        self.versions[aggregate_id] += 1
        envelope = seal(
            NewEvent(aggregate_type=aggregate_type, aggregate_id=aggregate_id, payload=payload, actor=actor),
            aggregate_version=self.versions[aggregate_id],
            producer="test@0",
            trace_context={},
        )
        subject = channel_subject(aggregate_id) if aggregate_type == "channel" else user_subject(aggregate_id)
        return ReceivedEvent(envelope, subject, stream, self.seqs[stream], 1, {})

    def register(self, user_id: str, name: str) -> ReceivedEvent:
        payload = UserRegistered(user_id=user_id, username=name, password_hash="$argon2id$secret", role="member")
        return self.event("AUTH", "user", user_id, payload, user_id)

    def create(self, channel: str, creator: str) -> ReceivedEvent:
        payload = ChannelCreated(channel_id=channel, name=f"#{channel}", creator_id=creator)
        return self.event("MSG", "channel", channel, payload, creator)

    def join(self, channel: str, user_id: str) -> ReceivedEvent:
        return self.event("MSG", "channel", channel, MemberJoined(channel_id=channel, user_id=user_id), user_id)

    def post(self, channel: str, sender: str, name: str, body: str) -> ReceivedEvent:
        self.channel_seq += 1
        sent = Timestamp()
        sent.FromNanoseconds(1_700_000_000_000_000_000 + self.channel_seq)
        payload = message_posted(
            channel, self.channel_seq, sender, body, message_id=f"m{self.channel_seq}", sender_name=name, sent_at=sent
        )
        return self.event("MSG", "channel", channel, payload, sender)

    def edit(self, channel: str, channel_seq: int, editor: str, name: str, body: str) -> ReceivedEvent:
        payload = MessageEdited(
            channel_id=channel,
            message_id=f"m{channel_seq}",
            channel_seq=channel_seq,
            body=body,
            editor_id=editor,
            editor_name=name,
        )
        return self.event("MSG", "channel", channel, payload, editor)


async def fill(archive: SqlEventArchive) -> Feed:
    feed = Feed()
    await archive.archive("storage-archive-auth", [feed.register(ALICE, "alice-zq7"), feed.register(BOB, "bob-xk3")])
    await archive.archive(
        "storage-archive-msg",
        [
            feed.create("general", ALICE),
            feed.join("general", BOB),
            feed.post("general", ALICE, "alice-zq7", "alice secret plan 4711"),
            feed.post("general", BOB, "bob-xk3", "bob public note 0815"),
            feed.post("general", ALICE, "alice-zq7", "alice second secret 4712"),
        ],
    )
    return feed


async def sealed_rows(archive: SqlEventArchive) -> dict[tuple[str, int], bytes]:
    def work(conn: Connection) -> dict[tuple[str, int], bytes]:
        rows = conn.execute(select(events.c.stream, events.c.stream_seq, events.c.envelope))
        return {(r.stream, r.stream_seq): bytes(r.envelope) for r in rows}

    return await archive.run("test_sealed_rows", work)


SECRETS = (b"alice secret plan 4711", b"bob public note 0815", b"alice-zq7", b"bob-xk3", b"argon2id")


async def test_database_holds_no_plaintext_body_or_name(archive: SqlEventArchive) -> None:
    await fill(archive)

    def every_value(conn: Connection) -> bytes:
        dump = bytearray()
        for table in (events, data_keys, *(t for t in events.metadata.sorted_tables if t not in (events, data_keys))):
            for row in conn.execute(select(table)):
                for value in row:
                    dump += value if isinstance(value, bytes) else str(value).encode()
        return bytes(dump)

    dump = await archive.run("test_dump", every_value)
    assert b"general" in dump  # the dump is real: identifiers stay readable
    for secret in SECRETS:
        assert secret not in dump
    if archive.engine.dialect.name == "sqlite":
        archive.engine.dispose()  # checkpoint nothing away: read the main file and the WAL as they are
        path = Path(str(archive.engine.url.database))
        files = [p for p in path.parent.iterdir() if p.name.startswith(path.name)]
        assert path in files
        for file in files:
            raw = file.read_bytes()
            for secret in SECRETS:
                assert secret not in raw, (file.name, secret)


async def test_swapped_ciphertexts_do_not_open(archive: SqlEventArchive) -> None:
    await fill(archive)
    rows = await sealed_rows(archive)
    first, third = rows[("MSG", 3)], rows[("MSG", 5)]  # both alice's messages: same data key

    def swap(conn: Connection) -> None:
        conn.execute(update(events).where(events.c.stream_seq == 3, events.c.stream == "MSG").values(envelope=third))
        conn.execute(update(events).where(events.c.stream_seq == 5, events.c.stream == "MSG").values(envelope=first))

    await archive.run("test_swap", swap)

    with pytest.raises(RecordUnreadable, match="tampered or moved"):
        await archive.channel_history("general", after_seq=0, limit=10)
    # Reads of archived events (what the audit verifier uses) name the damaged rows instead.
    stored, _ = await archive.aggregate_events("channel", "general", after_version=0, limit=10)
    damaged = [(e.stream_seq, e.unreadable, e.envelope is None) for e in stored if e.stream_seq in (3, 5)]
    assert damaged == [(3, True, True), (5, True, True)]
    assert all(e.envelope is not None for e in stored if e.stream_seq not in (3, 5))


async def test_shredding_one_user_erases_their_data_and_leaves_others_intact(archive: SqlEventArchive) -> None:
    await fill(archive)
    before = await sealed_rows(archive)

    shredded = await archive.shred_user(ALICE)

    assert len(shredded.key_ids) == 1
    messages, _ = await archive.channel_history("general", after_seq=0, limit=10)
    assert [(m.channel_seq, m.erased, m.sender_name, m.body) for m in messages] == [
        (1, True, "", ""),
        (2, False, "bob-xk3", "bob public note 0815"),
        (3, True, "", ""),
    ]
    assert [m.sender_id for m in messages] == [ALICE, BOB, ALICE]  # the log keeps its shape
    auth, _ = await archive.stream_events("AUTH", after_seq=0, limit=10)
    assert [e.envelope is None for e in auth] == [True, False]
    msg, _ = await archive.stream_events("MSG", after_seq=0, limit=10)
    assert [e.stream_seq for e in msg] == [1, 2, 3, 4, 5]
    # Channel events are sealed under the channel's key, not alice's: still readable.
    assert [e.envelope is not None for e in msg] == [True, True, False, True, False]
    assert await sealed_rows(archive) == before  # no event was rewritten

    def wrapped(conn: Connection) -> list[tuple[str, bool]]:
        rows = conn.execute(select(data_keys.c.owner, data_keys.c.wrapped_key).order_by(data_keys.c.owner))
        return [(r.owner, r.wrapped_key is not None) for r in rows]

    assert (f"user:{ALICE}", False) in await archive.run("test_wrapped", wrapped)
    assert (f"user:{BOB}", True) in await archive.run("test_wrapped", wrapped)
    # The destroyed key is gone from memory too: a fresh process finds nothing to unwrap.
    fresh = SqlEventArchive(archive.engine, DataKeys(archive.keys.keks))
    auth, _ = await fresh.stream_events("AUTH", after_seq=0, limit=10)
    assert [e.envelope is None for e in auth] == [True, False]
    # Shredding twice is harmless.
    assert (await archive.shred_user(ALICE)).key_ids == ()


async def test_a_post_archived_after_its_authors_erasure_is_as_unreadable_as_their_others(
    archive: SqlEventArchive, another_instance: SqlEventArchive
) -> None:
    """The archive was behind when alice was erased (her newest post was still on its way from
    the log): it is sealed under a key destroyed at once, never a live key of hers made anew,
    whichever instance archives it (CI's test_restore_platform saw an erased author's post in history)."""
    feed = await fill(archive)
    await archive.shred_user(ALICE)

    late = feed.post("general", ALICE, "alice-zq7", "alice late secret 4713")
    await archive.archive("storage-archive-msg", [late])
    await another_instance.archive(
        "storage-archive-msg", [feed.post("general", ALICE, "alice-zq7", "alice later secret 4714")]
    )

    for reader in (archive, another_instance, SqlEventArchive(archive.engine, DataKeys(archive.keys.keks))):
        messages, _ = await reader.channel_history("general", after_seq=0, limit=10)
        assert [(m.channel_seq, m.erased, m.body) for m in messages] == [
            (1, True, ""),
            (2, False, "bob public note 0815"),
            (3, True, ""),
            (4, True, ""),
            (5, True, ""),
        ]

    def alices_keys(conn: Connection) -> list[bool]:
        rows = conn.execute(select(data_keys.c.wrapped_key).where(data_keys.c.owner == f"user:{ALICE}"))
        return [r.wrapped_key is not None for r in rows]

    assert not any(await archive.run("test_alices_keys", alices_keys))  # none of hers is live
    assert not [k for k in archive.keys.keks.kept_keys().values() if k.owner == f"user:{ALICE}"]
    # The erasure's deletion from the log finds the late posts as hers.
    theirs = {e.stream_seq for e in await archive.events_of(ALICE, ["MSG"])}
    assert {late.stream_seq, late.stream_seq + 1} <= theirs


async def test_storage_start_forgets_erased_keys_an_old_keyring_copy_brought_back(
    archive: SqlEventArchive, tmp_path: Path
) -> None:
    """The operator put an older copy of the keyring back (from before alice's erasure): the
    archive records her keys destroyed, so the start-up reconcile shreds them from the keyring."""
    await fill(archive)
    keyring: Path = archive.keys.keks.path  # type: ignore[attr-defined]
    old_copy = keyring.read_bytes()
    (alice_key,) = (await archive.shred_user(ALICE)).key_ids
    keyring.write_bytes(old_copy)
    brought_back = FileKeyring.load_or_create(keyring)
    assert alice_key in brought_back.kept_keys()

    restarted = SqlEventArchive(archive.engine, DataKeys(brought_back))
    await restarted.reconcile_data_keys()

    assert alice_key not in brought_back.kept_keys()
    assert alice_key in FileKeyring.load_or_create(keyring).shredded_key_ids()  # on disk, not only in memory
    messages, _ = await restarted.channel_history("general", after_seq=0, limit=10)
    assert [(m.erased, m.body) for m in messages] == [(True, ""), (False, "bob public note 0815"), (True, "")]


async def test_shredding_reaches_the_text_of_a_users_edits(archive: SqlEventArchive) -> None:
    feed = await fill(archive)
    await archive.archive("storage-archive-msg", [feed.edit("general", 1, ALICE, "alice-zq7", "alice edited 9321")])
    messages, _ = await archive.channel_history("general", after_seq=0, limit=10)
    assert messages[0].body == "alice edited 9321"

    await archive.shred_user(ALICE)

    messages, _ = await archive.channel_history("general", after_seq=0, limit=10)
    assert [(m.body, m.erased) for m in messages] == [("", True), ("bob public note 0815", False), ("", True)]
    msg, _ = await archive.stream_events("MSG", after_seq=5, limit=10)
    assert [(e.event_type, e.envelope) for e in msg] == [("parley.messaging.v1.MessageEdited", None)]


async def test_export_holds_everything_about_one_user_and_nothing_of_others(archive: SqlEventArchive) -> None:
    await fill(archive)

    document = json.loads(build_export(ALICE, await archive.user_events(ALICE)))

    assert document["format"] == "parley-user-export/1"
    types = Counter(e["event_type"] for e in document["events"])
    assert types == {
        "parley.auth.v1.UserRegistered": 1,
        "parley.messaging.v1.ChannelCreated": 1,
        "parley.messaging.v1.MessagePosted": 2,
    }
    bodies = [e["payload"].get("body") for e in document["events"] if e["payload"]]
    assert "alice secret plan 4711" in bodies
    assert "alice second secret 4712" in bodies
    assert "bob public note 0815" not in json.dumps(document)
    assert "$argon2id$secret" not in json.dumps(document)  # a password hash is withheld
    registered = next(e for e in document["events"] if e["event_type"].endswith("UserRegistered"))
    assert registered["payload"]["username"] == "alice-zq7"

    await archive.shred_user(ALICE)
    after = json.loads(build_export(ALICE, await archive.user_events(ALICE)))
    assert "alice secret plan 4711" not in json.dumps(after)
    assert sum(e["erased"] for e in after["events"]) == 3


async def test_kek_rotation_rewraps_data_keys_without_rewriting_events(archive: SqlEventArchive) -> None:
    await fill(archive)
    keyring = archive.keys.keks
    assert isinstance(keyring, FileKeyring)
    old = keyring.current_id
    before = await sealed_rows(archive)

    rotation = await archive.rotate_kek()
    assert rotation.rewrapped == 3  # alice, bob and channel general
    assert rotation.destroyed_kek_ids == (old,)

    def keks_in_use(conn: Connection) -> set[str]:
        return set(conn.execute(select(data_keys.c.kek_id).distinct()).scalars())

    assert await archive.run("test_keks_in_use", keks_in_use) == {rotation.new_kek_id}
    assert old not in json.loads(keyring.path.read_text())["keys"]
    assert await sealed_rows(archive) == before
    reopened = SqlEventArchive(archive.engine, DataKeys(FileKeyring.load_or_create(keyring.path)))
    messages, _ = await reopened.channel_history("general", after_seq=0, limit=10)
    assert [m.body for m in messages] == ["alice secret plan 4711", "bob public note 0815", "alice second secret 4712"]


async def test_data_keys_do_not_open_under_another_keyring(archive: SqlEventArchive, tmp_path: Path) -> None:
    await fill(archive)
    keyring = archive.keys.keks
    assert isinstance(keyring, FileKeyring)
    assert stat.S_IMODE(keyring.path.stat().st_mode) == 0o600

    stranger = SqlEventArchive(archive.engine, DataKeys(FileKeyring.load_or_create(tmp_path / "other-kek.json")))
    with pytest.raises(UnknownKek):
        await stranger.channel_history("general", after_seq=0, limit=10)


class KmsStandIn:
    """Another KeyEncryptionKeys, as an operator would write one around a KMS's wrap/unwrap calls.

    It uses the same vetted AES-GCM; what it shows is that the archive needs nothing beyond the
    protocol: no file, no FileKeyring method.
    """

    def __init__(self) -> None:
        self._kek = AESGCM.generate_key(bit_length=256)
        self._shredded: set[str] = set()
        self._kept: dict[str, WrappedKey] = {}
        self.calls: Counter[str] = Counter()

    @property
    def current_id(self) -> str:
        return "kms-key-1"

    def wrap_and_keep(self, key_id: str, owner: str, data_key: bytes) -> WrappedKey:
        self.calls["wrap"] += 1
        nonce = os.urandom(12)
        sealed = AESGCM(self._kek).encrypt(nonce, data_key, data_key_context(key_id, owner))
        self._kept[key_id] = WrappedKey(key_id, owner, self.current_id, nonce + sealed)
        return self._kept[key_id]

    def unwrap(self, kek_id: str, wrapped: bytes, *, context: bytes) -> bytes:
        self.calls["unwrap"] += 1
        assert kek_id == self.current_id
        return AESGCM(self._kek).decrypt(wrapped[:12], wrapped[12:], context)

    def kept_keys(self) -> Mapping[str, WrappedKey]:
        return dict(self._kept)

    def rotate(self, *, shred: Sequence[str] = ()) -> Rotation:
        # A real KMS would create a key version, re-wrap, and schedule the old version's destruction.
        self.calls["rotate"] += 1
        self._shredded.update(shred)
        for key_id in shred:
            self._kept.pop(key_id, None)
        return Rotation(self.current_id, len(self._kept), ())

    def shredded_key_ids(self) -> frozenset[str]:
        return frozenset(self._shredded)


async def test_an_external_kms_plugs_in_through_the_protocol(archive: SqlEventArchive) -> None:
    kms = KmsStandIn()
    with_kms = SqlEventArchive(archive.engine, DataKeys(kms))
    await fill(with_kms)
    assert kms.calls["wrap"] == 3  # one data key each for alice, bob and the channel

    reopened = SqlEventArchive(archive.engine, DataKeys(kms))  # a restart: keys come back through unwrap
    messages, _ = await reopened.channel_history("general", after_seq=0, limit=10)
    assert [m.body for m in messages] == ["alice secret plan 4711", "bob public note 0815", "alice second secret 4712"]
    assert kms.calls["unwrap"] >= 2
    await reopened.shred_user(BOB)
    assert len(kms.shredded_key_ids()) == 1
    assert kms.calls["rotate"] == 1  # erasure is a new KEK generation, so the KMS destroys the old one
    messages, _ = await SqlEventArchive(archive.engine, DataKeys(kms)).channel_history("general", after_seq=0, limit=10)
    assert [m.erased for m in messages] == [False, True, False]


def test_the_sqlite_archive_and_its_wal_are_private_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        engine = open_engine(f"sqlite:///{tmp_path / 'archive.db'}")
        try:
            upgrade_to_head(engine)  # writes, so the -wal file exists while the engine is open
            made = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
        finally:
            engine.dispose()
    finally:
        os.umask(previous)
    assert made["archive.db"] == 0o600
    assert all(mode == 0o600 for mode in made.values()), made
