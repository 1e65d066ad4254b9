"""Auth's audit trail: records on the SEC stream, each a link in the signed hash chain.

Appends are ordered after the stream's last message, so two auth instances cannot fork the
chain: the loser reloads the head (reading at most AUDIT_HEAD_SCAN_LIMIT messages after start)
and links again. A change's record is written before the change (`recorded`), so nothing
happens unrecorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any

from parley.auth.v1.events_pb2 import AuditKeyPublished, SecurityEventRecorded, SigningKeyPublished
from prometheus_client import Counter

from parley_auth.audit_key import AuditSigner
from parley_core.actor import Actor
from parley_core.audit import AuditChain, TrustedKeys, trusted_keys
from parley_core.audit_log import SEC_STREAM, ChainHead, chain_head
from parley_core.bus import ConcurrencyConflict, EventBus
from parley_core.envelope import NewEvent
from parley_core.errors import Unavailable

log = logging.getLogger(__name__)

# Where the current call comes from, for the audit records it writes (one value per call task).
REQUEST_SOURCE: ContextVar[str] = ContextVar("request_source", default="")
# Conflicts on SEC are other auth instances' records (each retry re-reads the head and links
# again); past this many in a row the call fails rather than go unrecorded.
AUDIT_APPEND_ATTEMPTS = 20
# After start, a conflict on SEC reads at most this many of the newest messages for another
# instance's record: anyone who may publish there (auth's NATS password) can pile junk on the
# stream, and a login must not wait for auth to read it all (the start reads the whole stream).
AUDIT_HEAD_SCAN_LIMIT = 256
MAX_NOT_MADE_DETAIL = 200


def security_subject(kind: str, user_id: str) -> str:
    return f"parley.sec.{kind}.{user_id or 'unknown'}"


class AuditTrail:
    """The chain this instance writes; `load_head` before the first record."""

    def __init__(
        self,
        bus: EventBus,
        signer: AuditSigner,
        published_keys: list[AuditKeyPublished | SigningKeyPublished],
        records: Counter | None = None,
    ) -> None:
        self._bus = bus
        self._signer = signer
        self._published_keys = published_keys  # the projection's: grows as keys are published
        self._records = records
        self._chain = AuditChain()
        self._lock = asyncio.Lock()
        self._sec_last_seq = 0
        self.messages_read = 0  # by the head lookups (a flood on SEC must not grow a login's share)

    def trusted_keys(self) -> TrustedKeys:
        """The keys an audit record auth links after must be signed with: the published ones
        (a restored folder's earlier audit key among them) and this instance's own."""
        own = AuditKeyPublished(key_id=self._signer.key_id, public_key=self._signer.public_key)
        return trusted_keys([*self._published_keys, own])

    async def load_head(self) -> None:
        """The chain continues from the newest audit record on the SEC stream signed with a key
        auth trusts, which need not be the stream's newest message: another writer's message,
        or a record forged by someone who may publish on SEC, is no link in the chain."""
        head = await chain_head(self._bus.js, self.trusted_keys())
        self._saw(head)
        self._sec_last_seq = head.stream_last_seq
        self._chain = AuditChain()
        if head.record is not None:
            self._chain.advance(head.record)

    async def _follow_head(self) -> None:
        """After a conflict: the messages since the last one this instance knew, newest first and
        at most AUDIT_HEAD_SCAN_LIMIT of them, for another instance's newer record. Past the limit
        the chain goes on from this instance's own head, and the skipped stretch is logged as a
        security event (a flood on SEC; should another instance's record be in it, the verifier
        names the fork)."""
        last_known = self._sec_last_seq
        after = max(last_known, (await self._bus.js.stream_info(SEC_STREAM)).state.last_seq - AUDIT_HEAD_SCAN_LIMIT)
        head = await chain_head(self._bus.js, self.trusted_keys(), after_seq=after)
        self._saw(head)
        if head.record is not None and head.record.chain_index > self._chain.last_index:
            self._chain.advance(head.record)
        elif after > last_known:
            log.error(
                "security: SEC grew by more messages than auth reads for its chain head; linking after its own",
                extra={"security_event": "audit_head_scan_bounded", "unread": after - last_known},
            )
        self._sec_last_seq = head.stream_last_seq

    def _saw(self, head: ChainHead) -> None:
        self.messages_read += head.read
        if head.forged:
            log.error(
                "security: audit records on SEC that no trusted key signed (forged); not linked to",
                extra={"security_event": "audit_record_forged", "count": head.forged},
            )

    async def write(self, kind: str, *, actor: Actor, user_id: str = "", **fields: Any) -> int:
        """An audit record on the SEC stream: for the SIEM, and a link in the signed hash chain.
        Returns its chain number.

        Appends are ordered after the stream's last message, so two auth instances cannot fork
        the chain: the loser reloads the head and links again. A record is written before the
        change it reports (see `recorded`), so one that cannot be written fails the call
        (UNAVAILABLE) before the change is made: nothing happens unrecorded.
        """
        fields.setdefault("source", REQUEST_SOURCE.get())
        async with self._lock:
            for _ in range(AUDIT_APPEND_ATTEMPTS):
                record = SecurityEventRecorded(
                    kind=kind,
                    user_id=user_id,
                    actor=str(actor),
                    key_id=self._signer.key_id,
                    occurred_at_unix_ns=time.time_ns(),
                    **fields,
                )
                self._chain.link(record)
                record.signature = self._signer.sign(record.record_hash)
                event = NewEvent(
                    aggregate_type="security", aggregate_id=user_id or "unknown", payload=record, actor=actor
                )
                try:
                    appended = await self._bus.append(
                        security_subject(kind, user_id),
                        event,
                        aggregate_version=record.chain_index,
                        expected_last_subject_seq=None,
                        expected_last_stream_seq=self._sec_last_seq,
                    )
                except ConcurrencyConflict:
                    await self._follow_head()
                    continue
                except Exception as exc:
                    log.exception("audit record not written", extra={"kind": kind, "user_id": user_id})
                    # Which record it was stays in the log: a login's would tell whether the password was right.
                    raise Unavailable(
                        f"the audit trail refused the record of this call ({exc}); the change it records was not"
                        " made, try again (the operator checks the SEC stream)"
                    ) from exc
                self._chain.advance(record)
                self._sec_last_seq = appended.stream_seq
                if self._records is not None:
                    self._records.labels(kind).inc()
                return int(record.chain_index)
            log.error("audit record not written: the SEC stream kept moving", extra={"kind": kind})
            raise Unavailable("the audit trail is busy; the change this call records was not made, try again")

    @contextlib.asynccontextmanager
    async def recorded(self, kind: str, *, actor: Actor, user_id: str = "", **fields: Any) -> AsyncIterator[int]:
        """Around a change: its audit record is written first, so a change whose record cannot be
        written is not made. If the change then fails, a `change_not_made` record names the
        record it contradicts (as long as the trail can still be written): the trail may hold an
        attempt that did not take effect, never miss a change that did."""
        index = await self.write(kind, actor=actor, user_id=user_id, **fields)
        try:
            yield index
        except Exception as exc:
            why = (str(exc) or type(exc).__name__)[:MAX_NOT_MADE_DETAIL]
            with contextlib.suppress(Unavailable):
                await self.write(
                    "change_not_made", actor=actor, user_id=user_id, detail=f"record #{index} ({kind}): {why}"
                )
            raise
