"""The audit chain verifier names each kind of tampering and the record it hit."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from parley.auth.v1.events_pb2 import SecurityEventRecorded

from parley_core.audit import (
    AuditChain,
    Checkpoint,
    CheckpointInvalid,
    StoredRecord,
    TrustedKeys,
    record_digest,
    verify_chain,
)

KEY = Ed25519PrivateKey.generate()
KEYS = TrustedKeys(audit={"k1": KEY.public_key()})


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
    assert {f.kind for f in verify_chain(chain(2), TrustedKeys(audit={}))} == {"forged"}


def test_an_access_token_key_signs_only_records_before_the_first_audit_signed_one() -> None:
    """Records written before auth had an audit key were signed with the access-token key of
    their time; after the first record an audit key signed, that key (stolen, say) signs none."""
    token_key = Ed25519PrivateKey.generate()
    trusted = TrustedKeys(audit={"k1": KEY.public_key()}, token={"t1": token_key.public_key()})
    head, records = AuditChain(), []
    for i, key_id in enumerate(["t1", "t1", "t1", "k1", "k1", "t1"]):
        record = SecurityEventRecorded(kind="login_failed", user_id=f"u{i}", key_id=key_id)
        head.link(record)
        record.signature = (KEY if key_id == "k1" else token_key).sign(record.record_hash)
        head.advance(record)
        records.append(StoredRecord(position=100 + i, record=record))
    findings = verify_chain(records, trusted)
    assert [(f.kind, f.chain_index) for f in findings] == [("forged", 6)]
    assert "access-token key after auth's audit key took over" in findings[0].detail
    assert verify_chain(records[:3], trusted) == []  # a chain from before audit keys


def test_unreadable_rows_are_named_by_number_and_the_rest_is_still_checked() -> None:
    records = chain(8)
    records[2] = StoredRecord(position=102, record=None, index=3, damage="does not open")
    records[5] = StoredRecord(position=105, record=None, index=6, damage="its key is gone")
    records[6].record.detail = "altered as well"  # a further modification is still found
    findings = verify_chain(records, KEYS, expected_last_index=8)
    assert sorted((f.kind, f.chain_index, f.position) for f in findings) == [
        ("modified", 7, 106),
        ("unreadable", 3, 102),
        ("unreadable", 6, 105),
    ]
    assert "does not open" in str(next(f for f in findings if f.chain_index == 3))


def test_a_checkpoint_catches_a_rewrite_by_someone_holding_every_key() -> None:
    records = chain(6)
    checkpoint = Checkpoint.of(records[4].record, taken_at="2026-01-01T00:00:00+00:00", source="checkpoint c.json")
    # The insider rewrites record #3 and re-links and re-signs every record after it with auth's key.
    head = AuditChain(last_index=2, last_hash=records[1].record.record_hash)
    for stored in records[2:]:
        rewritten = stored.record
        if rewritten.chain_index == 3:
            rewritten.user_id = "someone-else"
        head.link(rewritten)
        rewritten.signature = KEY.sign(rewritten.record_hash)
        head.advance(rewritten)
    assert verify_chain(records, KEYS, expected_last_index=6) == []  # signatures and links hold
    findings = verify_chain(records, KEYS, expected_last_index=6, checkpoints=[checkpoint])
    assert [(f.kind, f.chain_index, f.position) for f in findings] == [("rewritten", 5, 104)]
    assert "checkpoint c.json (taken 2026-01-01" in findings[0].detail
    # A checkpoint beyond what the archive holds shows the cut; one not signed by auth is refused.
    assert [(f.kind, f.chain_index) for f in verify_chain(records[:3], KEYS, checkpoints=[checkpoint])] == [
        ("truncated", 5)
    ]
    unsigned = Checkpoint.of(records[4].record, source="checkpoint x.json")
    forged = dataclasses.replace(unsigned, signature=bytes(64))
    assert [f.kind for f in verify_chain(records, KEYS, checkpoints=[forged])] == ["bad-checkpoint"]


def test_a_checkpoint_file_reads_back_and_a_damaged_one_is_named() -> None:
    checkpoint = Checkpoint.of(chain(3)[2].record, taken_at="2026-01-01T00:00:00+00:00")
    again = Checkpoint.from_json(checkpoint.to_json(), source="checkpoint c.json")
    assert (again.chain_index, again.record_hash, again.signature) == (3, checkpoint.record_hash, checkpoint.signature)
    for text in ("{}", "not json", '{"format": "parley-audit-checkpoint/1", "chain_index": "x"}'):
        with pytest.raises(CheckpointInvalid, match=r"^checkpoint c\.json: "):
            Checkpoint.from_json(text, source="checkpoint c.json")


def test_records_cut_from_the_end_are_found_against_the_live_head() -> None:
    records = chain(6)
    assert verify_chain(records[:4], KEYS) == []  # alone, a shorter chain looks whole
    assert sorted((f.kind, f.chain_index) for f in verify_chain(records[:4], KEYS, expected_last_index=6)) == [
        ("truncated", 5),
        ("truncated", 6),
    ]
