"""The audit chain verifier names each kind of tampering and the record it hit."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from parley.auth.v1.events_pb2 import SecurityEventRecorded

from parley_core.audit import AuditChain, StoredRecord, record_digest, verify_chain

KEY = Ed25519PrivateKey.generate()
KEYS = {"k1": KEY.public_key()}


def chain(n: int) -> list[StoredRecord]:
    head = AuditChain()
    stored = []
    for i in range(n):
        record = SecurityEventRecorded(kind="login_failed", user_id=f"u{i}", key_id="k1", occurred_at_unix_ns=i)
        head.link(record)
        record.signature = KEY.sign(record.record_hash)
        head.advance(record)
        stored.append(StoredRecord(position=100 + i, record=record))
    return stored


def kinds(records: list[StoredRecord]) -> list[tuple[str, int]]:
    return sorted((f.kind, f.chain_index) for f in verify_chain(records, KEYS))


def test_an_intact_chain_has_no_findings() -> None:
    assert verify_chain(chain(6), KEYS) == []


def test_a_modified_record_is_named() -> None:
    records = chain(6)
    records[2].record.user_id = "someone-else"
    assert kinds(records) == [("modified", 3)]


def test_a_rewritten_record_with_a_recomputed_hash_is_forged() -> None:
    records = chain(6)
    records[2].record.user_id = "someone-else"
    records[2].record.record_hash = record_digest(records[2].record)
    assert ("forged", 3) in kinds(records)


def test_a_deleted_record_is_named() -> None:
    records = chain(6)
    del records[3]
    assert kinds(records) == [("deleted", 4)]


def test_an_inserted_copy_and_an_inserted_forgery_are_named() -> None:
    records = chain(6)
    records.insert(4, StoredRecord(position=999, record=records[1].record))
    assert ("inserted", 2) in kinds(records)
    records = chain(6)
    forged = SecurityEventRecorded(kind="login_succeeded", user_id="x", key_id="k1")
    AuditChain(last_index=6, last_hash=records[-1].record.record_hash).link(forged)
    forged.signature = Ed25519PrivateKey.generate().sign(forged.record_hash)
    records.append(StoredRecord(position=200, record=forged))
    assert kinds(records) == [("forged", 7)]


def test_reordered_records_are_named() -> None:
    records = chain(6)
    records[2], records[3] = records[3], records[2]
    assert ("reordered", 3) in kinds(records)
    assert not any(kind == "deleted" for kind, _ in kinds(records))


def test_an_unknown_key_is_not_trusted() -> None:
    assert {f.kind for f in verify_chain(chain(2), {})} == {"forged"}


def test_records_cut_from_the_end_are_found_against_the_live_head() -> None:
    records = chain(6)
    assert verify_chain(records[:4], KEYS) == []  # alone, a shorter chain looks whole
    assert sorted((f.kind, f.chain_index) for f in verify_chain(records[:4], KEYS, expected_last_index=6)) == [
        ("truncated", 5),
        ("truncated", 6),
    ]
