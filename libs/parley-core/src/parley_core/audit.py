"""The tamper-evident audit chain over security records, and its verifier; no I/O.

Each SecurityEventRecorded is numbered (chain_index from 1, no gaps), carries the previous
record's hash, is hashed with SHA-256 and the hash is signed with auth's Ed25519 key. Whoever
can edit the archive can recompute hashes but not signatures, so a verifier holding only the
public keys (from SigningKeyPublished events) finds a modified, deleted, inserted or
reordered record and says which.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from parley.auth.v1.events_pb2 import SecurityEventRecorded

GENESIS = bytes(32)


def record_digest(record: SecurityEventRecorded) -> bytes:
    """SHA-256 of the record with its own hash and signature left out (deterministic encoding)."""
    unsigned = SecurityEventRecorded()
    unsigned.CopyFrom(record)
    unsigned.ClearField("record_hash")
    unsigned.ClearField("signature")
    return hashlib.sha256(b"parley-audit-v1\x00" + unsigned.SerializeToString(deterministic=True)).digest()


@dataclass(frozen=True)
class StoredRecord:
    """A record as read back from a store, with where it was found (for the report)."""

    position: int  # e.g. the SEC stream sequence in the archive
    record: SecurityEventRecorded


@dataclass(frozen=True)
class Finding:
    kind: str  # modified, forged, deleted, inserted, reordered, broken-link
    chain_index: int
    position: int
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: record #{self.chain_index} (at {self.position}): {self.detail}"


def verify_chain(
    records: Sequence[StoredRecord], keys: dict[str, Ed25519PublicKey], *, expected_last_index: int | None = None
) -> list[Finding]:
    """Findings over `records` in stored order. `expected_last_index` (the live chain's head,
    from the SEC stream) also catches records cut from the end, which no chain can show alone."""
    findings: list[Finding] = []
    counts = Counter(r.record.chain_index for r in records)
    for stored in records:
        record, index = stored.record, stored.record.chain_index
        if record_digest(record) != record.record_hash:
            findings.append(Finding("modified", index, stored.position, "its content does not match its hash"))
            continue
        key = keys.get(record.key_id)
        try:
            if key is None:
                raise InvalidSignature
            key.verify(record.signature, record.record_hash)
        except InvalidSignature:
            findings.append(
                Finding("forged", index, stored.position, "not signed by auth's key: inserted or rewritten")
            )
    seen_first: dict[int, int] = {}
    for stored in records:
        index = stored.record.chain_index
        if counts[index] > 1 and index in seen_first:
            findings.append(
                Finding("inserted", index, stored.position, f"a second copy of the record at {seen_first[index]}")
            )
        seen_first.setdefault(index, stored.position)
    if records:
        present = set(counts)
        for missing in sorted(set(range(1, max(present) + 1)) - present):
            after = max((r.position for r in records if r.record.chain_index < missing), default=0)
            findings.append(Finding("deleted", missing, after, "missing from the chain"))
    previous: StoredRecord | None = None
    for stored in records:
        record = stored.record
        if previous is not None:
            before = previous.record
            if record.chain_index < before.chain_index:
                findings.append(
                    Finding(
                        "reordered",
                        record.chain_index,
                        stored.position,
                        f"stored after record #{before.chain_index}",
                    )
                )
            elif record.chain_index == before.chain_index + 1 and record.prev_hash != before.record_hash:
                findings.append(
                    Finding("broken-link", record.chain_index, stored.position, "does not point at the record before")
                )
        elif record.chain_index == 1 and record.prev_hash != GENESIS:
            findings.append(Finding("broken-link", 1, stored.position, "the first record must point at genesis"))
        previous = stored
    last = max((r.record.chain_index for r in records), default=0)
    if expected_last_index is not None and last < expected_last_index:
        end = max((r.position for r in records), default=0)
        findings.extend(
            Finding("truncated", index, end, "missing from the end of the archive (or not archived yet: re-run)")
            for index in range(last + 1, expected_last_index + 1)
        )
    return findings


@dataclass
class AuditChain:
    """The head of the chain, kept by the single writer (auth) to link the next record."""

    last_index: int = 0
    last_hash: bytes = GENESIS

    def link(self, record: SecurityEventRecorded) -> SecurityEventRecorded:
        """Number and link `record` after the head (it is signed by the caller)."""
        record.chain_index = self.last_index + 1
        record.prev_hash = self.last_hash
        record.record_hash = record_digest(record)
        return record

    def advance(self, record: SecurityEventRecorded) -> None:
        self.last_index, self.last_hash = record.chain_index, record.record_hash
