"""The audit chain's verification state as Prometheus gauges, so an alert fires on tampering.

Storage runs the verifier `parley audit verify` runs (parley_core.audit.verify_chain) over its
archive's copy of the chain at an interval: the records from its own SQL archive (what someone
with database access could edit), the keys and the chain's head from the live streams (another
trust domain). Every run checks the whole chain, so an old record altered today is found today;
its cost grows with the chain (one Ed25519 verification per record), hence the interval
(PARLEY_STORAGE_AUDIT_VERIFY_INTERVAL_SECONDS).

A chain that merely trails the live head (the archive is behind) is not called tampered: the
head is compared once the archive holds it, and the distance shows as head minus verified index
(ParleyAuditChainBehind). Operator checkpoints (`parley audit checkpoint`) in the checkpoint
folder (parley_core.audit_checkpoints: <data>/audit-checkpoints unless
PARLEY_STORAGE_AUDIT_CHECKPOINT_DIR names another) are compared on every run too.

The last run's verdict is what the console's VerifyAudit shows (GetAuditChainState) while it still
tells the truth: a call costs a look at the SEC stream's last sequence and the checkpoint folder's
listing, and runs afresh when either moved since the verdict (a record appended, a checkpoint
written) or when the archive trailed the head then; a call that asks for a fresh run, or finds
one under way, joins it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import Message

from parley_core.audit import (
    Checkpoint,
    CheckpointInvalid,
    Finding,
    StoredRecord,
    audit_row,
    trusted_keys,
    verify_chain,
)
from parley_core.audit_log import SEC_STREAM, chain_head
from parley_core.bus import EventBus, ReceivedEvent, Replay
from parley_core.envelope import UnknownEventType
from parley_core.metrics import ServiceMetrics
from parley_core.topology import AUDIT_KEYS_FILTER, AUTH_FILTER, SIGNING_KEYS_FILTER
from parley_storage.archive import SqlEventArchive, StoredEvent

log = logging.getLogger(__name__)

PAGE = 1000
# Before calling the archive behind the head, read it again this many times, this far apart.
CATCH_UP_READS = 3
CATCH_UP_PAUSE_S = 2.0
# Every kind verify_chain reports, so each series exists (at 0) from the first run on.
KINDS = (
    "modified",
    "forged",
    "deleted",
    "inserted",
    "reordered",
    "broken-link",
    "unreadable",
    "rewritten",
    "truncated",
)


@dataclass(frozen=True)
class CheckpointSeen:
    """The newest operator checkpoint a run compared the archive with."""

    checkpoint: Checkpoint
    matches: bool  # the archive's record at its number still has its hash


@dataclass(frozen=True)
class Verification:
    findings: tuple[Finding, ...]
    verified_index: int  # the newest record this run covered
    head_index: int  # the newest record on the live SEC stream when it began
    records: int = 0
    last_recorded_at_ns: int = 0  # the newest verified record's own time
    verified_at: float = 0.0  # when the run began (Unix time)
    last_checkpoint: CheckpointSeen | None = None
    checkpoint_errors: tuple[str, ...] = ()
    # What the verdict was drawn from, to tell when it is out of date (AuditChainMonitor.latest).
    head_seq: int = 0  # the SEC stream's last sequence when the run began
    checkpoint_files: tuple[tuple[str, int, int], ...] = ()  # (name, mtime_ns, size) of each checkpoint file


class AuditChainMonitor:
    def __init__(
        self,
        bus: EventBus,
        archive: SqlEventArchive,
        metrics: ServiceMetrics,
        *,
        checkpoint_dir: Path | None = None,
    ) -> None:
        self._bus = bus
        self._archive = archive
        self._checkpoint_dir = checkpoint_dir
        self._keys: list[Message] = []
        self._keys_replay: Replay | None = None
        self.last: Verification | None = None
        self._running: asyncio.Task[Verification] | None = None
        self._intact = metrics.gauge(
            "parley_audit_chain_intact",
            "1 when the last verification of the archived audit chain found nothing wrong, 0 when it found tampering",
        )
        self._verified_index = metrics.gauge(
            "parley_audit_chain_verified_index", "The newest audit record (chain index) the last verification covered"
        )
        self._head_index = metrics.gauge(
            "parley_audit_chain_head_index", "The newest audit record (chain index) on the live SEC stream"
        )
        self._findings = metrics.gauge(
            "parley_audit_chain_findings", "What the last verification found, per kind of finding", ("kind",)
        )
        self._verified_at = metrics.gauge(
            "parley_audit_verify_last_run_timestamp_seconds", "When the audit chain was last verified (Unix time)"
        )

    def start(self) -> None:
        """Follow the verification keys on the process's replay of AUTH (audit keys and
        access-token keys); a verification waits until it has caught up."""
        for keys in (SIGNING_KEYS_FILTER, AUDIT_KEYS_FILTER):
            self._keys_replay = self._bus.follow(
                stream="AUTH", filter_subject=AUTH_FILTER, handler=self._key, subjects=keys
            )

    async def _key(self, event: ReceivedEvent) -> None:
        with contextlib.suppress(UnknownEventType):
            self._keys.append(event.payload)

    async def verify(self) -> Verification:
        """A fresh run; one at a time: a caller during a run waits for that run's verdict."""
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._verify())
        return await asyncio.shield(self._running)

    async def latest(self) -> Verification:
        """The last run's verdict while it is up to date, else a fresh run's. The periodic run comes
        every few minutes: its verdict alone would miss the records and checkpoints since."""
        last = self.last
        if last is None or await self._outdated(last):
            return await self.verify()
        return last

    async def _outdated(self, last: Verification) -> bool:
        """A record was appended since the verdict, a checkpoint came or went, or the archive
        trailed the live head then."""
        if last.verified_index < last.head_index or self._checkpoint_files() != last.checkpoint_files:
            return True
        try:
            return await self._head_seq() != last.head_seq
        except Exception:  # NATS briefly away: the stored verdict is the best answer there is
            log.warning("cannot read the SEC stream's last sequence", exc_info=True)
            return False

    async def _head_seq(self) -> int:
        return int((await self._bus.js.stream_info(SEC_STREAM)).state.last_seq)

    def _checkpoint_files(self) -> tuple[tuple[str, int, int], ...]:
        if self._checkpoint_dir is None:
            return ()
        try:
            stats = [(file.name, file.stat()) for file in sorted(self._checkpoint_dir.glob("*.json"))]
        except OSError:
            return ()
        return tuple((name, stat.st_mtime_ns, stat.st_size) for name, stat in stats)

    async def _verify(self) -> Verification:
        if self._keys_replay is not None:
            # A verdict without every key would report tampering that is none; a halted replay
            # (ProjectionHalted) fails the run, which leaves the last figures.
            await self._keys_replay.wait_caught_up()
        started = time.time()
        head_seq = await self._head_seq()  # first: a record appended during the run makes the verdict out of date
        listing = self._checkpoint_files()
        keys = trusted_keys(self._keys)
        head = await chain_head(self._bus.js, keys, SEC_STREAM)  # before the archive is read: it holds at least this
        head_index = int(head.record.chain_index) if head.record is not None else 0
        records = await self._records()
        for _ in range(CATCH_UP_READS):  # the archive trails the stream by a moment under load
            if max((r.chain_index for r in records), default=0) >= head_index:
                break
            await asyncio.sleep(CATCH_UP_PAUSE_S)
            records = await self._records()
        last = max((r.chain_index for r in records), default=0)
        live = [Checkpoint.of(head.record, source="the live SEC stream")] if head.record and last >= head_index else []
        operators, unreadable = self._operator_checkpoints()
        findings = tuple(verify_chain(records, keys, checkpoints=[*live, *operators]))
        newest = max((r for r in records if r.chain_index == last and r.record is not None), default=None, key=_index)
        verified = Verification(
            findings=findings,
            verified_index=last,
            head_index=head_index,
            records=len(records),
            last_recorded_at_ns=int(newest.record.occurred_at_unix_ns) if newest and newest.record else 0,
            verified_at=started,
            last_checkpoint=_newest_checkpoint(operators, records, findings),
            checkpoint_errors=unreadable,
            head_seq=head_seq,
            checkpoint_files=listing,
        )
        self._show(verified)
        self.last = verified
        return verified

    def _operator_checkpoints(self) -> tuple[list[Checkpoint], tuple[str, ...]]:
        """Every `*.json` checkpoint in the configured folder, and what could not be read."""
        if self._checkpoint_dir is None:
            return [], ()
        checkpoints: list[Checkpoint] = []
        errors: list[str] = []
        try:
            files = sorted(self._checkpoint_dir.glob("*.json"))
        except OSError as exc:
            return [], (f"cannot list {self._checkpoint_dir}: {exc.strerror}",)
        for file in files:
            try:
                checkpoints.append(Checkpoint.from_json(file.read_text(), source=f"checkpoint {file.name}"))
            except OSError as exc:
                errors.append(f"checkpoint {file.name}: cannot be read ({exc.strerror})")
            except CheckpointInvalid as exc:
                errors.append(str(exc))
        if not files:
            errors.append(f"no checkpoint in {self._checkpoint_dir} yet (`parley audit checkpoint` writes one there)")
        return checkpoints, tuple(errors)

    def _show(self, verified: Verification) -> None:
        self._intact.set(0 if verified.findings else 1)
        self._verified_index.set(verified.verified_index)
        self._head_index.set(verified.head_index)
        counted = dict.fromkeys(KINDS, 0)
        for finding in verified.findings:
            counted[finding.kind] = counted.get(finding.kind, 0) + 1
        for kind, count in counted.items():
            self._findings.labels(kind).set(count)
        self._verified_at.set(time.time())
        if verified.findings:
            log.error(
                "audit chain verification found tampering",
                extra={"findings": [str(f) for f in verified.findings[:20]]},
            )

    async def _records(self) -> Sequence[StoredRecord]:
        rows: list[StoredRecord] = []
        after = 0
        while True:
            page, more = await self._archive.stream_events(SEC_STREAM, after_seq=after, limit=PAGE)
            rows.extend(row for event in page if (row := _row(event)) is not None)
            if page:
                after = page[-1].stream_seq
            if not more:
                return rows


def _index(record: StoredRecord) -> int:
    return record.position


def _newest_checkpoint(
    checkpoints: Sequence[Checkpoint], records: Sequence[StoredRecord], findings: Sequence[Finding]
) -> CheckpointSeen | None:
    newest = max(checkpoints, key=lambda c: (c.chain_index, c.taken_at), default=None)
    if newest is None:
        return None
    held = any(
        r.record is not None and r.chain_index == newest.chain_index and r.record.record_hash == newest.record_hash
        for r in records
    )
    named = any(newest.name in f.detail for f in findings)  # rewritten, or not signed by an audit key
    return CheckpointSeen(checkpoint=newest, matches=held and not named)


def _row(event: StoredEvent) -> StoredRecord | None:
    return audit_row(
        position=event.stream_seq,
        claimed_index=event.aggregate_version,
        payload=event.payload(),  # None for a damaged row: named as such
        event_type=event.event_type,
        aggregate_type=event.aggregate_type,
        unreadable=event.unreadable,
        erased=event.envelope is None and not event.unreadable,
    )
