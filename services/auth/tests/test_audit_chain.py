"""Audit records flow auth -> SEC stream -> storage's SQL archive; `parley audit verify` checks
the archive against the keys on the live AUTH stream and names each kind of tampering."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import grpc
from parley.auth.v1.events_pb2 import SecurityEventRecorded

from parley_cli.audit import keys_from_stream, live_chain_head, read_archived_records
from parley_core.audit import verify_chain
from parley_core.envelope import decode, open_payload
from parley_core.testing.nats import NatsTestServer
from parley_core.testing.stack import TIMEOUT_S, Stack

RECORDS = 8


def snapshot(archive: Path, copy: Path) -> None:
    """A consistent copy of the live (WAL) archive, to tamper with."""
    with sqlite3.connect(archive) as source, sqlite3.connect(copy) as target:
        source.backup(target)


def sec_rows(db: sqlite3.Connection) -> list[tuple[int, int, bytes]]:
    return db.execute("SELECT id, stream_seq, envelope FROM events WHERE stream = 'SEC' ORDER BY stream_seq").fetchall()


def cli_verify(copy: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "parley_cli",
            "--data-dir",
            str(copy.parent),
            "audit",
            "verify",
            "--archive",
            str(copy),
            "--keys-from-archive",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_audit_verify_names_modified_deleted_inserted_and_reordered_records(
    stack: Stack, nats_server: NatsTestServer, tmp_path: Path
) -> None:
    await stack.create_user("alice", "member")
    for attempt in range(RECORDS):
        password = "wrong-password-here" if attempt % 2 else "a-long-enough-passphrase"
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stack.login("alice", password)
    archive = stack.data_dir / "storage" / "archive.db"

    deadline = time.monotonic() + TIMEOUT_S
    while len(read_archived_records(archive)) < RECORDS:
        assert time.monotonic() < deadline, "the archive never caught up with the SEC stream"
        await asyncio.sleep(0.1)
    keys = await keys_from_stream(
        nats_url=nats_server.url, password=nats_server.passwords["platform"], ca_cert=nats_server.ca_cert
    )
    head = await live_chain_head(
        nats_url=nats_server.url, password=nats_server.passwords["platform"], ca_cert=nats_server.ca_cert
    )
    records = read_archived_records(archive)
    deadline = time.monotonic() + TIMEOUT_S
    while records[-1].record.chain_index < head:  # the archive trails the stream
        assert time.monotonic() < deadline, "the archive never caught up with the SEC stream"
        await asyncio.sleep(0.1)
        records = read_archived_records(archive)
    assert verify_chain(records, keys, expected_last_index=head) == []
    assert verify_chain(records[:-2], keys, expected_last_index=head)[0].kind == "truncated"
    assert [r.record.chain_index for r in records] == list(range(1, len(records) + 1))
    assert {r.record.kind for r in records} >= {"role_assigned", "login_succeeded", "login_failed"}

    intact = tmp_path / "intact.db"
    snapshot(archive, intact)
    ok = cli_verify(intact)
    assert ok.returncode == 0, ok.stderr
    assert "intact" in ok.stdout

    def tampered(name: str) -> tuple[Path, sqlite3.Connection]:
        copy = tmp_path / f"{name}.db"
        snapshot(archive, copy)
        return copy, sqlite3.connect(copy)

    # Modified: record #3's user id is changed inside its stored envelope.
    copy, db = tampered("modified")
    row_id, _, envelope_bytes = sec_rows(db)[2]
    envelope = decode(envelope_bytes)
    record = open_payload(envelope)
    assert isinstance(record, SecurityEventRecorded)
    record.username = "nobody"
    envelope.payload = record.SerializeToString()
    db.execute("UPDATE events SET envelope = ? WHERE id = ?", (envelope.SerializeToString(), row_id))
    db.commit()
    result = cli_verify(copy)
    assert result.returncode == 1
    assert "modified: record #3" in result.stdout

    # Deleted: record #4 disappears.
    copy, db = tampered("deleted")
    db.execute("DELETE FROM events WHERE id = ?", (sec_rows(db)[3][0],))
    db.commit()
    assert "deleted: record #4" in cli_verify(copy).stdout

    # Inserted: a copy of record #2 is added at the end.
    copy, db = tampered("inserted")
    rows = sec_rows(db)
    columns = "stream, subject, event_id, event_type, schema_version, aggregate_type, aggregate_id, "
    columns += "aggregate_version, occurred_at_ns, actor, producer, envelope"
    db.execute(
        f"INSERT INTO events (stream_seq, {columns}) SELECT ?, {columns} FROM events WHERE id = ?",
        (rows[-1][1] + 1000, rows[1][0]),
    )
    db.commit()
    assert "inserted: record #2" in cli_verify(copy).stdout

    # Reordered: records #5 and #6 swap places in the archive.
    copy, db = tampered("reordered")
    rows = sec_rows(db)
    (id5, seq5, _), (id6, seq6, _) = rows[4], rows[5]
    db.execute("UPDATE events SET stream_seq = -1 WHERE id = ?", (id5,))
    db.execute("UPDATE events SET stream_seq = ? WHERE id = ?", (seq5, id6))
    db.execute("UPDATE events SET stream_seq = ? WHERE id = ?", (seq6, id5))
    db.commit()
    result = cli_verify(copy)
    assert result.returncode == 1
    assert "reordered: record #5" in result.stdout
    print(f"\n[audit verify] {result.stdout.strip()}")
