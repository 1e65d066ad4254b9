"""Backups on SQLite and PostgreSQL: create, verify, restore, tampering, shreds after a backup,
and the backup keys storage makes at its first start."""

from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
import stat
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.timestamp_pb2 import Timestamp
from parley.auth.v1.events_pb2 import UserRegistered
from parley.messaging.v1.events_pb2 import ChannelCreated, MessagePosted
from sqlalchemy.exc import OperationalError

from parley_core.bus import ReceivedEvent
from parley_core.envelope import NewEvent, seal
from parley_core.runner import RefusedToStart
from parley_core.topology import channel_subject, user_subject
from parley_storage.archive import SqlEventArchive, open_engine
from parley_storage.backup import (
    MANIFEST,
    REGISTRY,
    SIGNATURE,
    SNAPSHOT,
    BackupInvalid,
    BackupKeys,
    RestoreRefused,
    create_backup,
    restore_backup,
    verify_backup,
)
from parley_storage.datakeys import DataKeys
from parley_storage.kek import FileKeyring, data_key_context
from parley_storage.key_files import BACKUP_KEY_FILE, SIGNING_KEY_FILE, VERIFY_KEY_FILE
from parley_storage.migrate import upgrade_to_head
from parley_testing.nats import NatsTestServer
from parley_testing.stack import Stack, start_service

ALICE, BOB = "user-alice", "user-bob"


def received(
    stream: str, seq: int, aggregate_type: str, aggregate_id: str, version: int, payload: object
) -> ReceivedEvent:
    envelope = seal(
        NewEvent(aggregate_type=aggregate_type, aggregate_id=aggregate_id, payload=payload, actor=ALICE),  # type: ignore[arg-type]
        aggregate_version=version,
        producer="test@0",
        trace_context={},
    )
    subject = channel_subject(aggregate_id) if aggregate_type == "channel" else user_subject(aggregate_id)
    return ReceivedEvent(envelope, subject, stream, seq, 1, {})


def posted(seq: int, sender: str, body: str) -> ReceivedEvent:
    sent = Timestamp()
    sent.FromNanoseconds(1_700_000_000_000_000_000 + seq)
    payload = MessagePosted(
        channel_id="general",
        message_id=f"m{seq}",
        sender_id=sender,
        sender_name=sender.removeprefix("user-"),
        channel_seq=seq,
        body=body,
        sent_at=sent,
    )
    return received("MSG", seq + 1, "channel", "general", seq + 1, payload)


async def fill(archive: SqlEventArchive, messages: int) -> None:
    await archive.archive(
        "storage-archive-auth",
        [
            received("AUTH", 1, "user", ALICE, 1, UserRegistered(user_id=ALICE, username="alice")),
            received("AUTH", 2, "user", BOB, 1, UserRegistered(user_id=BOB, username="bob")),
        ],
    )
    created = received("MSG", 1, "channel", "general", 1, ChannelCreated(channel_id="general", creator_id=ALICE))
    posts = [posted(n, ALICE if n % 2 else BOB, f"message {n}") for n in range(1, messages + 1)]
    await archive.archive("storage-archive-msg", [created, *posts])


def restored_archive(tmp_path: Path, keyring: Path, backup: Path, keys: BackupKeys, name: str) -> SqlEventArchive:
    target = open_engine(f"sqlite:///{tmp_path / name}")
    restore_backup(backup, keys, FileKeyring.load_or_create(keyring), target)
    return SqlEventArchive(target, DataKeys(FileKeyring.load_or_create(keyring)))


async def history(archive: SqlEventArchive) -> list[tuple[int, str, str, bool]]:
    messages, has_more = await archive.channel_history("general", after_seq=0, limit=500)
    assert not has_more
    return [(m.channel_seq, m.sender_name, m.body, m.erased) for m in messages]


async def test_restore_gives_the_same_history_and_events(archive: SqlEventArchive, tmp_path: Path) -> None:
    await fill(archive, 40)
    keys = BackupKeys.load_or_create(tmp_path / "secrets")
    backup = tmp_path / "backup-1"

    manifest = create_backup(archive.engine, keys, backup)

    assert manifest["consumer_positions"] == {"storage-archive-auth": 2, "storage-archive-msg": 41}
    assert manifest["event_counts"] == {"AUTH": 2, "MSG": 41}
    assert manifest["source_dialect"] == archive.engine.dialect.name
    assert verify_backup(backup, keys)["backup_id"] == manifest["backup_id"]
    raw = (backup / SNAPSHOT).read_bytes()
    assert b"message 1" not in raw
    assert b"SQLite format" not in raw  # the snapshot file itself is encrypted

    restored = restored_archive(tmp_path, archive.keys.keks.path, backup, keys, "restored.db")  # type: ignore[attr-defined]
    try:
        assert await history(restored) == await history(archive)
        assert len(await history(restored)) == 40
        for stream in ("AUTH", "MSG"):
            assert await restored.stream_events(stream, after_seq=0, limit=500) == await archive.stream_events(
                stream, after_seq=0, limit=500
            )
        # Restoring over an archive is refused, leaving it as it was.
        with pytest.raises(RestoreRefused, match="already holds"):
            restore_backup(backup, keys, archive.keys.keks, restored.engine)
        assert len(await history(restored)) == 40
    finally:
        restored.engine.dispose()


async def test_every_backup_file_is_private_whatever_the_umask(archive: SqlEventArchive, tmp_path: Path) -> None:
    await fill(archive, 2)
    keys = BackupKeys.load_or_create(tmp_path / "secrets")
    backup = tmp_path / "backup-modes"
    previous = os.umask(0o022)  # the usual umask, under which a plain open() makes files 0644
    try:
        create_backup(archive.engine, keys, backup)
    finally:
        os.umask(previous)

    assert stat.S_IMODE(backup.stat().st_mode) == 0o700
    assert {name.name: stat.S_IMODE(name.stat().st_mode) for name in backup.iterdir()} == {
        SNAPSHOT: 0o600,
        MANIFEST: 0o600,
        SIGNATURE: 0o600,
    }


async def test_a_failed_backup_leaves_no_folder_behind(tmp_path: Path) -> None:
    """The failure a wrong data folder once caused (an empty database: no consumer_positions);
    the corrected retry may use the same folder name."""
    keys = BackupKeys.load_or_create(tmp_path / "secrets")
    empty = open_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    backup = tmp_path / "backup"
    try:
        with pytest.raises(OperationalError, match="no such table"):
            create_backup(empty, keys, backup)
        assert not backup.exists()

        upgrade_to_head(empty)
        assert create_backup(empty, keys, backup)["event_counts"] == {}
        assert verify_backup(backup, keys)
    finally:
        empty.dispose()


def test_the_backup_keys_are_made_once_and_never_replaced(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    BackupKeys.create_missing(secrets)
    made = {name: (secrets / name).read_bytes() for name in (BACKUP_KEY_FILE, SIGNING_KEY_FILE, VERIFY_KEY_FILE)}
    assert {stat.S_IMODE((secrets / name).stat().st_mode) for name in made} == {0o600}

    BackupKeys.create_missing(secrets)
    assert {name: (secrets / name).read_bytes() for name in made} == made

    (secrets / VERIFY_KEY_FILE).unlink()  # the public half is derived again from the signing key
    BackupKeys.create_missing(secrets)
    keys = BackupKeys.load(secrets)
    assert (secrets / VERIFY_KEY_FILE).read_bytes() == made[VERIFY_KEY_FILE]
    assert keys.signing_key is not None
    keys.verify_key.verify(keys.signing_key.sign(b"manifest"), b"manifest")
    assert sorted(p.name for p in secrets.iterdir()) == sorted(made)  # no temporary file left


async def test_storage_makes_the_backup_keys_at_its_first_start(stack: Stack) -> None:
    """So that a key backup taken right after installing holds every file a restore needs."""
    secrets = stack.data_dir / "secrets"
    keys = BackupKeys.load(secrets)
    assert keys.signing_key is not None
    keys.verify_key.verify(keys.signing_key.sign(b"manifest"), b"manifest")
    assert (secrets / "storage-kek.json").exists()


async def test_storage_refuses_to_start_on_a_damaged_keyring(
    stack: Stack, nats_server: NatsTestServer, tmp_path: Path
) -> None:
    """One line saying what to do, not a JSON parser's traceback (the runner logs it and exits 78).
    A folder of its own: the stack's storage keeps running on its intact keyring."""
    damaged = tmp_path / "damaged"
    shutil.copytree(stack.data_dir, damaged, ignore=shutil.ignore_patterns("*.db*", "*.lock"))
    keyring = damaged / "secrets" / "storage-kek.json"
    keyring.write_text(keyring.read_text()[:40])  # cut short, as a bad copy leaves it

    with pytest.raises(RefusedToStart, match=r"storage-kek\.json is not a readable keyring: copy it again"):
        await start_service(replace(stack, data_dir=damaged), nats_server, "storage", registration="open")


async def test_tampering_and_foreign_keys_are_detected(archive: SqlEventArchive, tmp_path: Path) -> None:
    await fill(archive, 5)
    keys = BackupKeys.load_or_create(tmp_path / "secrets")
    good = tmp_path / "good"
    create_backup(archive.engine, keys, good)

    flipped = tmp_path / "flipped"
    shutil.copytree(good, flipped)
    data = bytearray((flipped / SNAPSHOT).read_bytes())
    data[len(data) // 2] ^= 0x01
    (flipped / SNAPSHOT).write_bytes(bytes(data))
    with pytest.raises(BackupInvalid, match="checksum"):
        verify_backup(flipped, keys)

    edited = tmp_path / "edited"
    shutil.copytree(good, edited)
    manifest = json.loads((edited / MANIFEST).read_text())
    manifest["event_counts"]["MSG"] = 1
    (edited / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    with pytest.raises(BackupInvalid, match="signature"):
        verify_backup(edited, keys)

    unsigned = tmp_path / "unsigned"
    shutil.copytree(good, unsigned)
    (unsigned / SIGNATURE).unlink()
    with pytest.raises(BackupInvalid, match="missing"):
        verify_backup(unsigned, keys)

    stranger = BackupKeys.load_or_create(tmp_path / "other-secrets")
    with pytest.raises(BackupInvalid, match="signature"):
        verify_backup(good, stranger)

    with pytest.raises(RestoreRefused, match="exists"):
        create_backup(archive.engine, keys, good)


async def test_shredding_after_a_backup_reaches_the_restored_copy(archive: SqlEventArchive, tmp_path: Path) -> None:
    await fill(archive, 6)
    keys = BackupKeys.load_or_create(tmp_path / "secrets")
    backup = tmp_path / "before-erasure"
    create_backup(archive.engine, keys, backup)

    await archive.shred_user(ALICE)

    restored = restored_archive(tmp_path, archive.keys.keks.path, backup, keys, "restored.db")  # type: ignore[attr-defined]
    try:
        rows = await history(restored)
        assert [r for r in rows if r[3]] == [(n, "", "", True) for n in (1, 3, 5)]
        assert [r[2] for r in rows if not r[3]] == ["message 2", "message 4", "message 6"]
        auth, _ = await restored.stream_events("AUTH", after_seq=0, limit=10)
        assert [e.envelope is None for e in auth] == [True, False]
    finally:
        restored.engine.dispose()


async def test_an_old_backup_holds_no_key_that_opens_after_an_erasure(archive: SqlEventArchive, tmp_path: Path) -> None:
    """Not the code's word for it: the backup's own wrapped copy of alice's key, tried against
    every KEK the keyring still holds, opens under none; bob's data come back from the keyring."""
    await fill(archive, 6)
    keys = BackupKeys.load_or_create(tmp_path / "secrets")
    backup = tmp_path / "before-erasure"
    create_backup(archive.engine, keys, backup)
    keyring_path: Path = archive.keys.keks.path  # type: ignore[attr-defined]
    kek_before = json.loads(keyring_path.read_text())["current"]

    await archive.shred_user(ALICE)

    ring = json.loads(keyring_path.read_text())
    assert kek_before not in ring["keys"]  # the KEK generation of the backup's day is destroyed
    live_keks = [base64.b64decode(k) for k in ring["keys"].values()]
    snapshot = tmp_path / "snapshot.sqlite"
    verify_backup(backup, keys, into=snapshot)
    with closing(sqlite3.connect(snapshot)) as db:
        wrapped = db.execute("SELECT key_id, owner, wrapped_key FROM data_keys").fetchall()
    assert {owner for _, owner, _ in wrapped} == {f"user:{ALICE}", f"user:{BOB}", "channel:general"}
    for key_id, owner, blob in wrapped:
        for kek in live_keks:
            with pytest.raises(InvalidTag):
                AESGCM(kek).decrypt(blob[:12], blob[12:], data_key_context(key_id, owner))
    assert f"user:{ALICE}" not in {k["owner"] for k in ring["data_keys"].values()}

    restored = restored_archive(tmp_path, keyring_path, backup, keys, "restored.db")
    try:
        rows = await history(restored)
        assert [r for r in rows if r[3]] == [(n, "", "", True) for n in (1, 3, 5)]
        assert [(r[1], r[2]) for r in rows if not r[3]] == [("bob", f"message {n}") for n in (2, 4, 6)]
    finally:
        restored.engine.dispose()


def registry_folder(root: Path) -> Path:
    """A patch registry's folder: its TUF repository, online keys, root keys and a half-written file."""
    files = {
        "tuf/metadata/1.root.json": "root v1",
        "tuf/metadata/timestamp.json": "timestamp",
        "tuf/targets/messaging/abc.parley_messaging-0.9.0-py3-none-any.whl": "wheel bytes",
        "keys/snapshot.0.pem": "snapshot key",
        "keys/offline/root.0.pem": "root key",
        "tuf/metadata/.timestamp.json.tmp": "half-written",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "keys" / "snapshot.0.pem").chmod(0o600)
    return root


async def test_the_registry_folder_travels_with_the_backup(archive: SqlEventArchive, tmp_path: Path) -> None:
    await fill(archive, 2)
    keys = BackupKeys.load_or_create(tmp_path / "secrets")
    registry = registry_folder(tmp_path / "data" / "patch-registry")
    backup = tmp_path / "backup"

    manifest = create_backup(archive.engine, keys, backup, registry=registry)

    assert manifest["registry_files"] == 4  # not the root key, not the half-written file
    assert b"wheel bytes" not in (backup / REGISTRY).read_bytes()
    assert verify_backup(backup, keys)["backup_id"] == manifest["backup_id"]
    restored_registry = tmp_path / "fresh" / "patch-registry"
    target = open_engine(f"sqlite:///{tmp_path / 'restored.db'}")
    try:
        restore_backup(backup, keys, archive.keys.keks, target, registry=restored_registry)
        with pytest.raises(RestoreRefused, match="exists"):
            restore_backup(backup, keys, archive.keys.keks, target, registry=restored_registry)
    finally:
        target.dispose()
    copied = {
        p.relative_to(restored_registry).as_posix(): p.read_text() for p in restored_registry.rglob("*") if p.is_file()
    }
    assert copied == {
        "tuf/metadata/1.root.json": "root v1",
        "tuf/metadata/timestamp.json": "timestamp",
        "tuf/targets/messaging/abc.parley_messaging-0.9.0-py3-none-any.whl": "wheel bytes",
        "keys/snapshot.0.pem": "snapshot key",
    }
    assert stat.S_IMODE((restored_registry / "keys" / "snapshot.0.pem").stat().st_mode) == 0o600

    # A chunk of the archive moved into the registry's file (same key, same backup) does not open.
    swapped = tmp_path / "swapped"
    shutil.copytree(backup, swapped)
    shutil.copy2(swapped / SNAPSHOT, swapped / REGISTRY)
    body = json.loads((swapped / MANIFEST).read_text())
    body["files"][REGISTRY] = {
        **body["files"][REGISTRY],
        **{k: body["files"][SNAPSHOT][k] for k in ("bytes", "sha256")},
    }
    signed = json.dumps(body, indent=1, sort_keys=True).encode()
    (swapped / MANIFEST).write_bytes(signed)
    assert keys.signing_key is not None
    (swapped / SIGNATURE).write_bytes(keys.signing_key.sign(signed))  # even re-signed by the owner
    with pytest.raises(BackupInvalid, match=f"{REGISTRY} chunk 0 does not authenticate"):
        verify_backup(swapped, keys)


async def test_a_keyring_copy_older_than_an_erasure_forgets_the_erased_keys_on_restore(
    archive: SqlEventArchive, tmp_path: Path
) -> None:
    """The key backup was not refreshed after alice's erasure, and a backup taken after it is
    restored with that copy: the restore must not keep alice's keys, or an older backup restored
    with the resulting keyring would bring her back."""
    await fill(archive, 4)
    keys = BackupKeys.load_or_create(tmp_path / "secrets")
    create_backup(archive.engine, keys, tmp_path / "before-erasure")
    keyring: Path = archive.keys.keks.path  # type: ignore[attr-defined]
    stale = tmp_path / "stale-kek.json"
    shutil.copy2(keyring, stale)  # the key backup's copy: it still holds alice's keys
    alice_keys = {k for k, v in json.loads(stale.read_text())["data_keys"].items() if v["owner"] == f"user:{ALICE}"}
    assert alice_keys
    await archive.shred_user(ALICE)
    create_backup(archive.engine, keys, tmp_path / "after-erasure")

    restored = restored_archive(tmp_path, stale, tmp_path / "after-erasure", keys, "restored.db")
    try:
        assert [r[3] for r in await history(restored)] == [True, False, True, False]  # alice erased, bob not
    finally:
        restored.engine.dispose()
    ring = json.loads(stale.read_text())
    assert not alice_keys & set(ring["data_keys"])  # forgotten, and the generations that wrapped them destroyed
    assert alice_keys <= set(ring["shredded"])

    older = restored_archive(tmp_path, stale, tmp_path / "before-erasure", keys, "older.db")
    try:
        rows = await history(older)
        assert [r for r in rows if r[3]] == [(n, "", "", True) for n in (1, 3)]  # she stays erased
        assert [r[2] for r in rows if not r[3]] == ["message 2", "message 4"]
    finally:
        older.engine.dispose()


async def test_a_keyring_older_than_the_backup_is_refused(archive: SqlEventArchive, tmp_path: Path) -> None:
    """The key backup was not refreshed after an erasure: the backup's newer keys would not open."""
    await fill(archive, 2)
    keyring: Path = archive.keys.keks.path  # type: ignore[attr-defined]
    stale = tmp_path / "stale-kek.json"
    shutil.copy2(keyring, stale)
    await archive.shred_user(ALICE)  # a new key generation, which the stale copy lacks
    carol = received("AUTH", 3, "user", "user-carol", 1, UserRegistered(user_id="user-carol", username="carol"))
    await archive.archive("storage-archive-auth", [carol])  # her key exists under the new generation only
    keys = BackupKeys.load_or_create(tmp_path / "secrets")
    backup = tmp_path / "after-erasure"
    create_backup(archive.engine, keys, backup)
    target = open_engine(f"sqlite:///{tmp_path / 'restored.db'}")
    try:
        with pytest.raises(RestoreRefused, match="the keyring is older than this backup: it cannot open 1 of its"):
            restore_backup(backup, keys, FileKeyring.load_or_create(stale), target)
        restore_backup(backup, keys, archive.keys.keks, target)  # nothing was written: the newest one restores
        restored = SqlEventArchive(target, DataKeys(archive.keys.keks))
        auth, _ = await restored.stream_events("AUTH", after_seq=0, limit=10)
        assert [e.envelope is None for e in auth] == [True, False, False]  # alice erased; bob and carol open
    finally:
        target.dispose()
