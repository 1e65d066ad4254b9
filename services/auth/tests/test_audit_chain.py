"""Audit records flow auth -> SEC stream -> storage's archive; the verifier reads them back
through storage (as `parley audit verify` does) and checks them against the keys and the chain
head on the live streams. Every kind of tampering is named in libs/parley-core/tests/test_audit.py;
here the real path, and a deletion straight in the database, which at-rest encryption cannot see."""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Any

import grpc
from parley.storage.v1 import storage_pb2_grpc

from parley_cli.audit import archived_keys, archived_records, keys_from_stream, live_chain_head, report
from parley_core.audit import verify_chain
from parley_core.testing.nats import NatsTestServer
from parley_core.testing.stack import TIMEOUT_S, Stack
from parley_core.testing.waiting import eventually

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
