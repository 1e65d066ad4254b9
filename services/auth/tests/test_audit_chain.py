"""Audit records flow auth -> SEC stream -> storage's archive; the verifier reads them back
through storage (as `parley audit verify` does) and checks them against the keys and the chain
head on the live streams. Every kind of tampering is named in libs/parley-core/tests/test_audit.py;
here the real path, and a deletion straight in the database, which at-rest encryption cannot see."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import grpc
import pytest
from nats.js.api import DiscardPolicy
from parley.auth.v1 import auth_pb2, auth_pb2_grpc
from parley.auth.v1.events_pb2 import SecurityEventRecorded
from parley.patch.v1.events_pb2 import VulnerabilityOverdue
from parley.storage.v1 import storage_pb2_grpc
from sqlalchemy import Connection, select, update

from parley_auth.audit_key import AuditSigner
from parley_auth.key_files import AUDIT_KEY_FILE
from parley_cli.audit import (
    archived_keys,
    archived_records,
    keys_from_stream,
    live_chain_head,
    live_head,
    read_checkpoints,
    report,
    write_checkpoint,
)
from parley_core.audit import AuditChain, Checkpoint, StoredRecord, verify_chain
from parley_core.bus import EventBus
from parley_core.envelope import NewEvent, decode
from parley_core.topology import user_subject
from parley_storage.schema import events
from parley_storage.sealing import open_sealed, row_aad, seal
from parley_testing.nats import NatsTestServer
from parley_testing.security import audit_records
from parley_testing.stack import PASSWORD, TIMEOUT_S, Stack, start_service
from parley_testing.waiting import eventually

RECORDS = 8


async def test_audit_chain_through_the_archive_and_a_deleted_row(stack: Stack, nats_server: NatsTestServer) -> None:
    await stack.create_user("alice", "member")
    for attempt in range(RECORDS):
        password = "wrong-password-here" if attempt % 2 else "a-long-enough-passphrase"
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stack.login("alice", password)
    storage = storage_pb2_grpc.StorageArchiveServiceStub(stack.internal("storage", identity="platform"))
    nats = {"nats_url": nats_server.url, "password": nats_server.passwords["platform"], "ca_cert": nats_server.ca_cert}
    head = await live_chain_head(**nats)
    assert head >= RECORDS

    async def caught_up() -> list[Any] | None:  # the archive trails the stream
        archived = await archived_records(storage)
        return archived if archived and archived[-1].record.chain_index >= head else None

    records = await eventually(caught_up, "the archive to catch up with the SEC stream", TIMEOUT_S)
    keys = await keys_from_stream(**nats)
    assert verify_chain(records, keys, expected_last_index=head) == []
    assert verify_chain(records, await archived_keys(storage), expected_last_index=head) == []
    assert [r.record.chain_index for r in records] == list(range(1, head + 1))
    assert {r.record.kind for r in records} >= {"role_assigned", "login_succeeded", "login_failed"}
    assert all(r.record.source for r in records if r.record.kind.startswith("login"))

    # Someone with database access deletes record #4's row.
    archive = stack.data_dir / "storage" / "archive.db"
    with sqlite3.connect(archive) as db:
        deleted = db.execute("DELETE FROM events WHERE stream = 'SEC' AND stream_seq = ?", (records[3].position,))
        assert deleted.rowcount == 1
    tampered = await archived_records(storage)
    findings = verify_chain(tampered, keys, expected_last_index=head)
    assert [(f.kind, f.chain_index) for f in findings] == [("deleted", 4)]
    # Records cut from the end show against the live head.
    cut = verify_chain(tampered[:-1], keys, expected_last_index=head)
    assert ("truncated", head) in [(f.kind, f.chain_index) for f in cut]
    print(f"\n[audit verify] {report(tampered, findings)}")


def nats_of(nats_server: NatsTestServer) -> dict[str, Any]:
    return {"nats_url": nats_server.url, "password": nats_server.passwords["platform"], "ca_cert": nats_server.ca_cert}


async def test_a_foreign_message_newest_on_sec_does_not_restart_the_chain(
    stack: Stack, nats_server: NatsTestServer
) -> None:
    """Versions before this one had the patch registry append its overdue alerts to SEC: one of
    them (or any message that is no audit record) as the stream's newest must not start a new
    chain at #1, neither for the running auth (its next append conflicts and re-reads the head)
    nor for one that starts then."""
    await stack.create_user("alice", "member")
    await stack.login("alice")
    before = await audit_records(nats_server, timeout=TIMEOUT_S)
    bus = EventBus(await nats_server.connect("platform"), service="patch-registry", producer="patch-registry@0.1.0")
    overdue = VulnerabilityOverdue(advisory_id="PYSEC-2023-1", service="messaging", priority="critical")
    await bus.append(
        "parley.sec.patch.overdue.PYSEC-2023-1",
        NewEvent(aggregate_type="finding", aggregate_id="PYSEC-2023-1", payload=overdue, actor="service:registry"),
        aggregate_version=1,
        expected_last_subject_seq=None,
    )
    await stack.login("alice")  # the running auth
    second = await start_service(stack, nats_server, "auth", registration="open")
    try:
        await stack.auth_as_gateway(second.port).Login(  # one that started with the alert newest
            auth_pb2.LoginRequest(username="alice", password=PASSWORD), timeout=TIMEOUT_S
        )
    finally:
        await second.shutdown()
    records = await audit_records(nats_server, timeout=TIMEOUT_S)
    assert [r.chain_index for r in records] == list(range(1, len(records) + 1))
    assert len(records) >= len(before) + 2
    assert verify_chain(records, await keys_from_stream(**nats_of(nats_server))) == []


async def test_a_change_whose_record_cannot_be_written_is_not_made(stack: Stack, nats_server: NatsTestServer) -> None:
    """SEC full (a message limit, discarding new messages): the change the record is for fails
    with UNAVAILABLE and is not made. Once SEC takes records again the same call works, and the
    chain holds one record of it and no gap."""
    alice = await stack.create_user("alice", "member")
    platform = auth_pb2_grpc.AuthServiceStub(stack.internal("auth", identity="platform"))
    nc = await nats_server.connect("platform")
    js = nc.jetstream()
    auth_app = stack.app("auth")
    user_seq = auth_app.accounts.by_id(alice.user_id).user_seq
    to_guest = auth_pb2.AssignRoleRequest(user_id=alice.user_id, role="guest")

    async def limit(stream: str, max_msgs: int) -> None:
        config = (await js.stream_info(stream)).config
        config.max_msgs = max_msgs
        config.discard = DiscardPolicy.NEW if max_msgs > 0 else DiscardPolicy.OLD
        await js.update_stream(config)

    full = (await js.stream_info("SEC")).state.messages
    await limit("SEC", full)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await platform.AssignRole(to_guest, timeout=TIMEOUT_S)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "the audit trail refused the record of this call" in (refused.value.details() or "")
        assert "was not made" in (refused.value.details() or "")
    finally:
        await limit("SEC", -1)
    assert auth_app.accounts.by_id(alice.user_id).role == "member"
    assert await stack.app("auth").ctx.bus.last_subject_seq("AUTH", user_subject(alice.user_id)) == user_seq

    # The event log refusing the change after its record: the record stays, and a
    # change_not_made record says it did not happen.
    await limit("AUTH", (await js.stream_info("AUTH")).state.messages)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as not_made:
            await platform.AssignRole(to_guest, timeout=TIMEOUT_S)
        assert not_made.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await limit("AUTH", -1)
    assert auth_app.accounts.by_id(alice.user_id).role == "member"

    await platform.AssignRole(to_guest, timeout=TIMEOUT_S)
    assert auth_app.accounts.by_id(alice.user_id).role == "guest"
    records = await audit_records(nats_server, timeout=TIMEOUT_S)
    assert verify_chain(records, await keys_from_stream(**nats_of(nats_server))) == []
    assert [r.chain_index for r in records] == list(range(1, len(records) + 1))
    about_alice = [(r.record.kind, r.record.detail) for r in records if r.record and r.record.user_id == alice.user_id]
    assert about_alice[-3:] == [
        ("role_assigned", "member -> guest"),
        ("change_not_made", next(d for k, d in about_alice if k == "change_not_made")),
        ("role_assigned", "member -> guest"),
    ]
    assert about_alice[-2][1].startswith(f"record #{records[-3].chain_index} (role_assigned): ")


async def caught_up_archive(storage: storage_pb2_grpc.StorageArchiveServiceAsyncStub, head: int) -> list[StoredRecord]:
    async def caught_up() -> list[StoredRecord] | None:
        archived = await archived_records(storage)
        return archived if archived and archived[-1].chain_index >= head else None

    return await eventually(caught_up, "the archive to catch up with the SEC stream", TIMEOUT_S)


async def some_records(stack: Stack, count: int) -> None:
    await stack.create_user("alice", "member")
    for attempt in range(count):
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stack.login("alice", "wrong-password-here" if attempt % 2 else PASSWORD)


async def test_a_rewrite_by_someone_holding_every_key_is_caught_by_a_checkpoint(
    stack: Stack, nats_server: NatsTestServer, tmp_path: Path
) -> None:
    """The insider holds secrets/: storage's keyring (to re-encrypt archive rows) and auth's audit
    key (to re-sign). They rewrite record #3 and re-link and re-sign every record after it: links
    and signatures all hold, and only the operator's checkpoint (and the live head, unless they
    rewrote SEC as well) shows it."""
    await some_records(stack, 6)
    nats = nats_of(nats_server)
    head = await live_head(**nats)
    assert head.record is not None
    assert head.record.chain_index >= 6
    checkpoint_file = tmp_path / "outside" / "checkpoint.json"
    checkpoint_file.parent.mkdir()
    assert not write_checkpoint(checkpoint_file, Checkpoint.of(head.record, taken_at="now"), stack.data_dir)
    (checkpoint,) = read_checkpoints([checkpoint_file])
    storage = storage_pb2_grpc.StorageArchiveServiceStub(stack.internal("storage", identity="platform"))
    await caught_up_archive(storage, head.record.chain_index)

    archive = stack.app("storage").archive
    signer = AuditSigner.load_or_create(stack.data_dir / "secrets" / AUDIT_KEY_FILE)

    def rewrite(conn: Connection) -> None:
        chain: AuditChain | None = None
        rows = conn.execute(select(events).where(events.c.stream == "SEC").order_by(events.c.stream_seq)).all()
        for row in rows:
            key = archive.keys.get(conn, row.key_id)
            aad = row_aad(row)
            envelope = decode(open_sealed(key, bytes(row.envelope), aad))
            record = SecurityEventRecorded.FromString(envelope.payload)
            if record.chain_index < 3:
                chain = AuditChain(last_index=record.chain_index, last_hash=record.record_hash)
                continue
            assert chain is not None
            if record.chain_index == 3:
                record.kind, record.detail = "login_succeeded", "nothing to see"
            chain.link(record)
            record.signature = signer.sign(record.record_hash)
            chain.advance(record)
            envelope.payload = record.SerializeToString()
            resealed = seal(key, envelope.SerializeToString(), aad)
            conn.execute(update(events).where(events.c.id == row.id).values(envelope=resealed))

    await archive.run("insider_rewrite", rewrite)
    records = await archived_records(storage)
    keys = await keys_from_stream(**nats)
    assert records[2].record is not None
    assert records[2].record.detail == "nothing to see"
    assert verify_chain(records, keys, expected_last_index=head.record.chain_index) == []  # it all holds
    findings = verify_chain(records, keys, expected_last_index=head.record.chain_index, checkpoints=[checkpoint])
    assert [(f.kind, f.chain_index) for f in findings] == [("rewritten", checkpoint.chain_index)]
    assert f"checkpoint {checkpoint_file}" in findings[0].detail
    live = Checkpoint.of(head.record, source="the live SEC stream")
    assert [f.kind for f in verify_chain(records, keys, checkpoints=[live])] == ["rewritten"]
    print(f"\n[audit verify --checkpoint] {report(records, findings, [checkpoint])}")


async def test_damaged_rows_are_named_by_number_and_the_rest_is_checked(
    stack: Stack, nats_server: NatsTestServer
) -> None:
    """A corrupted row (a byte flipped), two swapped rows (each other's ciphertext) and a row
    whose key reference was altered: storage reads them back flagged instead of failing, and
    the verifier names each by chain number and archive position and checks all the others."""
    await some_records(stack, 8)
    nats = nats_of(nats_server)
    head = await live_chain_head(**nats)
    storage = storage_pb2_grpc.StorageArchiveServiceStub(stack.internal("storage", identity="platform"))
    intact = await caught_up_archive(storage, head)
    position = {r.chain_index: r.position for r in intact}
    archive_db = stack.data_dir / "storage" / "archive.db"
    with sqlite3.connect(archive_db) as db:

        def blob(index: int) -> bytes:
            query = "SELECT envelope FROM events WHERE stream = 'SEC' AND stream_seq = ?"
            return bytes(db.execute(query, (position[index],)).fetchone()[0])

        def put(index: int, **columns: object) -> None:
            assignments = ", ".join(f"{name} = ?" for name in columns)
            query = f"UPDATE events SET {assignments} WHERE stream = 'SEC' AND stream_seq = ?"
            assert db.execute(query, (*columns.values(), position[index])).rowcount == 1

        corrupted = bytearray(blob(2))
        corrupted[len(corrupted) // 2] ^= 0x01
        put(2, envelope=bytes(corrupted))
        four, five = blob(4), blob(5)
        put(4, envelope=five)
        put(5, envelope=four)
        put(7, key_id="no-such-key")
    records = await archived_records(storage)  # no "internal error"
    findings = verify_chain(records, await keys_from_stream(**nats), expected_last_index=head)
    assert sorted((f.kind, f.chain_index, f.position) for f in findings) == [
        ("unreadable", index, position[index]) for index in (2, 4, 5, 7)
    ]
    details = {f.chain_index: f.detail for f in findings}
    assert "altered" in details[2]
    assert "moved" in details[4]
    assert "key" in details[7]
    print(f"\n[audit verify] {report(records, findings)}")
