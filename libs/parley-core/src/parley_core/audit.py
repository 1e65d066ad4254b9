"""The tamper-evident audit chain over security records, its checkpoints and its verifier; no I/O.

Each SecurityEventRecorded is numbered (chain_index from 1, no gaps), carries the previous
record's hash, is hashed with SHA-256 and the hash is signed with auth's audit key (Ed25519).
Whoever can edit the archive can recompute hashes but not signatures, so a verifier holding only
the public keys (from AuditKeyPublished events) finds a modified, deleted, inserted or reordered
record and says which.

Whoever holds every key (an insider with the data folder's secrets/) can rewrite a record and
re-link and re-sign all that follow. A checkpoint, the signed head (number and hash) that the
operator keeps outside the data folder, catches that: the rewritten chain's record at the
checkpoint's number no longer has the checkpoint's hash.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import Message
from parley.auth.v1.events_pb2 import AuditKeyPublished, SecurityEventRecorded, SigningKeyPublished

GENESIS = bytes(32)
CHECKPOINT_FORMAT = "parley-audit-checkpoint/1"
RECORD_TYPE = SecurityEventRecorded.DESCRIPTOR.full_name
RECORD_AGGREGATE = "security"  # auth's aggregate type for audit records (bound into the row's encryption)
# What a damaged row is, in the verifier's words.
ROW_DOES_NOT_OPEN = "the archive cannot open it: its content was altered, or it was moved from another row"
ROW_KEY_GONE = "its data key is gone (audit records are never erased): its key reference was altered"
ROW_NOT_A_RECORD = "it opens, but holds no audit record"


def record_digest(record: SecurityEventRecorded) -> bytes:
    """SHA-256 of the record with its own hash and signature left out (deterministic encoding)."""
    unsigned = SecurityEventRecorded()
    unsigned.CopyFrom(record)
    unsigned.ClearField("record_hash")
    unsigned.ClearField("signature")
    return hashlib.sha256(b"parley-audit-v1\x00" + unsigned.SerializeToString(deterministic=True)).digest()


@dataclass(frozen=True)
class StoredRecord:
    """A record as read back from a store, with where it was found (for the report).

    A row the store could not read (its content altered, moved or its key gone) has no record:
    `index` is then the number the row claims (its aggregate version) and `damage` says why.
    """

    position: int  # e.g. the SEC stream sequence in the archive
    record: SecurityEventRecorded | None
    index: int = 0
    damage: str = ""

    @property
    def chain_index(self) -> int:
        return int(self.record.chain_index) if self.record is not None else self.index


def audit_row(
    *,
    position: int,
    claimed_index: int,
    payload: Message | None,
    event_type: str,
    aggregate_type: str,
    unreadable: bool,
    erased: bool,
) -> StoredRecord | None:
    """One archived SEC row as the verifier reads it, as far as it can be read: a damaged one
    keeps its place, named by the number its row claims (its aggregate version). None for other
    writers' messages on SEC, which are no part of the chain."""
    if isinstance(payload, SecurityEventRecorded):
        return StoredRecord(position=position, record=payload)
    if event_type == RECORD_TYPE or aggregate_type == RECORD_AGGREGATE:
        damage = ROW_DOES_NOT_OPEN if unreadable else ROW_KEY_GONE if erased else ROW_NOT_A_RECORD
        return StoredRecord(position=position, record=None, index=claimed_index, damage=damage)
    return None


def trusted_keys(published: Iterable[Message]) -> TrustedKeys:
    """The keys from AUTH events: audit keys, and access-token keys (retired ones included: a
    retired key still signed the records of its time) for the records before audit keys."""
    audit: dict[str, Ed25519PublicKey] = {}
    token: dict[str, Ed25519PublicKey] = {}
    for payload in published:
        if isinstance(payload, AuditKeyPublished):
            audit[payload.key_id] = Ed25519PublicKey.from_public_bytes(payload.public_key)
        elif isinstance(payload, SigningKeyPublished):
            token[payload.key_id] = Ed25519PublicKey.from_public_bytes(payload.public_key)
    return TrustedKeys(audit=audit, token=token)


@dataclass(frozen=True)
class TrustedKeys:
    """The public keys a record may be signed with.

    Audit keys (AuditKeyPublished) sign records. Before auth had one, the access-token key of
    the time did: a token key is trusted only for records earlier in the chain than the first
    record an audit key signed, so a stolen token key cannot add to the chain after that (it
    would have to re-sign the audit-signed records that follow).
    """

    audit: Mapping[str, Ed25519PublicKey]
    token: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)

    def signed(self, key_id: str, signature: bytes, record_hash: bytes, *, token_allowed: bool) -> bool:
        key = self.audit.get(key_id) or (self.token.get(key_id) if token_allowed else None)
        if key is None:
            return False
        try:
            key.verify(signature, record_hash)
        except InvalidSignature:
            return False
        return True

    def first_audit_signed(self, records: Sequence[StoredRecord]) -> int | None:
        """The number of the first record an audit key signed (None before auth had one)."""
        signed = (r.chain_index for r in records if r.record is not None and r.record.key_id in self.audit)
        return min(signed, default=None)


class CheckpointInvalid(Exception):
    """A checkpoint file that cannot be read; the message names it and says why."""


@dataclass(frozen=True)
class Checkpoint:
    """The chain's head at one moment: its number and hash, with auth's signature over the hash."""

    chain_index: int
    record_hash: bytes
    key_id: str
    signature: bytes
    occurred_at_ns: int  # the head record's own time
    taken_at: str = ""  # when the operator took it (ISO 8601), for the report
    source: str = ""  # where it was read from ("checkpoint FILE"), for the report

    @classmethod
    def of(cls, record: SecurityEventRecorded, *, taken_at: str = "", source: str = "") -> Checkpoint:
        return cls(
            chain_index=int(record.chain_index),
            record_hash=bytes(record.record_hash),
            key_id=record.key_id,
            signature=bytes(record.signature),
            occurred_at_ns=int(record.occurred_at_unix_ns),
            taken_at=taken_at,
            source=source,
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": CHECKPOINT_FORMAT,
                "chain_index": self.chain_index,
                "record_hash": self.record_hash.hex(),
                "key_id": self.key_id,
                "signature": base64.b64encode(self.signature).decode(),
                "record_time": datetime.fromtimestamp(self.occurred_at_ns / 1e9, UTC).isoformat(),
                "record_time_ns": self.occurred_at_ns,
                "taken_at": self.taken_at,
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str, *, source: str) -> Checkpoint:
        try:
            data = json.loads(text)
            if data.get("format") != CHECKPOINT_FORMAT:
                raise CheckpointInvalid(f"{source}: not a Parley audit checkpoint ({CHECKPOINT_FORMAT})")
            checkpoint = cls(
                chain_index=int(data["chain_index"]),
                record_hash=bytes.fromhex(data["record_hash"]),
                key_id=str(data["key_id"]),
                signature=base64.b64decode(data["signature"], validate=True),
                occurred_at_ns=int(data["record_time_ns"]),
                taken_at=str(data.get("taken_at", "")),
                source=source,
            )
        except CheckpointInvalid:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointInvalid(f"{source}: not a readable audit checkpoint ({exc})") from None
        if checkpoint.chain_index < 1 or len(checkpoint.record_hash) != len(GENESIS):
            raise CheckpointInvalid(f"{source}: not a readable audit checkpoint (no record number or hash)")
        return checkpoint

    @property
    def name(self) -> str:
        """How a report names it: its source ("checkpoint FILE", "the live SEC stream") and when."""
        when = f" (taken {self.taken_at})" if self.taken_at else ""
        return f"{self.source or 'the checkpoint'}{when}"


@dataclass(frozen=True)
class Finding:
    kind: str  # modified, forged, deleted, inserted, reordered, broken-link, truncated, unreadable, rewritten
    chain_index: int
    position: int
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: record #{self.chain_index} (at {self.position}): {self.detail}"


def verify_chain(
    records: Sequence[StoredRecord],
    keys: TrustedKeys,
    *,
    expected_last_index: int | None = None,
    checkpoints: Sequence[Checkpoint] = (),
) -> list[Finding]:
    """Findings over `records` in stored order. `expected_last_index` (the live chain's head,
    from the SEC stream) also catches records cut from the end, which no chain can show alone;
    each checkpoint's hash must be the hash of the record at its number. Unreadable rows are
    named and the rest of the chain is checked around them."""
    findings: list[Finding] = []
    first_audit = keys.first_audit_signed(records)
    for stored in records:
        if stored.record is None:
            findings.append(Finding("unreadable", stored.index, stored.position, stored.damage))
            continue
        record, index = stored.record, stored.chain_index
        if record_digest(record) != record.record_hash:
            findings.append(Finding("modified", index, stored.position, "its content does not match its hash"))
            continue
        token_allowed = first_audit is None or index < first_audit
        if not keys.signed(record.key_id, record.signature, record.record_hash, token_allowed=token_allowed):
            findings.append(Finding("forged", index, stored.position, _why_forged(record, keys)))
    findings.extend(_copies_and_gaps(records))
    findings.extend(_order_and_links(records))
    last = max((r.chain_index for r in records), default=0)
    end = max((r.position for r in records), default=0)
    if expected_last_index is not None and last < expected_last_index:
        findings.extend(
            Finding("truncated", index, end, "missing from the end of the archive (or not archived yet: re-run)")
            for index in range(last + 1, expected_last_index + 1)
        )
    for checkpoint in checkpoints:
        token_allowed = first_audit is None or checkpoint.chain_index < first_audit
        findings.extend(
            _against_checkpoint(
                records,
                keys,
                checkpoint,
                token_allowed=token_allowed,
                last=last,
                end=end,
                expected_last_index=expected_last_index,
            )
        )
    return findings


def _why_forged(record: SecurityEventRecorded, keys: TrustedKeys) -> str:
    if record.key_id in keys.token:
        return (
            "signed with an access-token key after auth's audit key took over: forged with a stolen token key,"
            " or written by an auth from before audit keys during a roll-out"
        )
    return "not signed by auth's audit key: inserted or rewritten"


def _copies_and_gaps(records: Sequence[StoredRecord]) -> list[Finding]:
    findings: list[Finding] = []
    counts = Counter(r.chain_index for r in records)
    seen_first: dict[int, int] = {}
    for stored in records:
        index = stored.chain_index
        if counts[index] > 1 and index in seen_first:
            findings.append(
                Finding("inserted", index, stored.position, f"a second copy of the record at {seen_first[index]}")
            )
        seen_first.setdefault(index, stored.position)
    if records:
        present = set(counts)
        for missing in sorted(set(range(1, max(present) + 1)) - present):
            after = max((r.position for r in records if r.chain_index < missing), default=0)
            findings.append(Finding("deleted", missing, after, "missing from the chain"))
    return findings


def _order_and_links(records: Sequence[StoredRecord]) -> list[Finding]:
    findings: list[Finding] = []
    previous: StoredRecord | None = None
    for stored in records:
        record = stored.record
        if previous is not None and stored.chain_index < previous.chain_index:
            findings.append(
                Finding(
                    "reordered", stored.chain_index, stored.position, f"stored after record #{previous.chain_index}"
                )
            )
        elif (
            previous is not None
            and record is not None
            and previous.record is not None  # an unreadable neighbour's hash is unknown
            and stored.chain_index == previous.chain_index + 1
            and record.prev_hash != previous.record.record_hash
        ):
            findings.append(
                Finding("broken-link", stored.chain_index, stored.position, "does not point at the record before")
            )
        elif previous is None and record is not None and record.chain_index == 1 and record.prev_hash != GENESIS:
            findings.append(Finding("broken-link", 1, stored.position, "the first record must point at genesis"))
        previous = stored
    return findings


def _against_checkpoint(
    records: Sequence[StoredRecord],
    keys: TrustedKeys,
    checkpoint: Checkpoint,
    *,
    token_allowed: bool,
    last: int,
    end: int,
    expected_last_index: int | None,
) -> list[Finding]:
    index = checkpoint.chain_index
    if not keys.signed(checkpoint.key_id, checkpoint.signature, checkpoint.record_hash, token_allowed=token_allowed):
        return [Finding("bad-checkpoint", index, 0, f"{checkpoint.name} is not signed by a published audit key")]
    if index > last:
        if expected_last_index is not None and index <= expected_last_index:
            return []  # reported as truncated already
        return [Finding("truncated", index, end, f"missing from the end of the archive ({checkpoint.name} has it)")]
    found = next((r for r in records if r.chain_index == index), None)
    if found is None or found.record is None:
        return []  # reported as deleted or unreadable already
    if found.record.record_hash != checkpoint.record_hash:
        return [
            Finding(
                "rewritten",
                index,
                found.position,
                f"its hash is not the one in {checkpoint.name}: records #1..#{index} were rewritten "
                "(re-linked and re-signed: by someone holding auth's keys)",
            )
        ]
    return []


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
