"""Auth marks an erased account's username when storage says the erasure is due, and revokes a
session, requires its step-up or holds back an address's logins when storage's anomaly detector
asks (SessionRevocationDue, SessionStepUpDue, SourceSlowdownDue, below) and auth's own records
show what the asking rule counted (anomaly_evidence.py); else it records
`anomaly_response_refused` on the audit chain and parks the fact.

Storage writes nothing to AUTH. Before it deletes an erased user's account events from the log,
it records `AccountErasureDue` on its STORE stream (parley.storage.due.auth.>, the only part of
STORE auth reads, through its durable consumer `auth-storage-due`), and auth, the username
subjects' one writer, appends the `AccountErased` tombstone there with the id parley_core.markers
derives: the name stays taken, and every service's access projection refuses the account's
tokens. Storage deletes once it holds the tombstone. Like every change to an account, the
tombstone is recorded in the audit chain first (`account_erased`, naming storage's fact), and
is not appended while the chain refuses the record (the fact waits, see RetryLater).

A fact is checked first: auth acts only for an account whose erasure was requested through
auth itself (AccountErasureRequested, written by RequestErasure after it checked the caller),
else it records `account_erasure_refused` on the audit chain and parks the fact, so storage's
word alone erases nobody; and a username subject held by another account is never tombstoned
(refused and parked with the reason).

Auth also deletes from AUTH, the only NATS user that may, what storage's `LogDeletionDue` names
(parley_core.log_deletion): only for an account auth tombstoned itself, only that account's own
events (sealed under its key in the archive: its registration, its account subject), never a
subject's newest event others append after. Anything else is refused whole, with a
`log_deletion_refused` audit record, and nothing is deleted.

Idempotent: auth remembers the tombstones it applied, so a repeated fact, or a redelivery after
a crash, appends nothing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import NoReturn, Protocol

from parley.auth.v1.events_pb2 import AccountErased, SourceSlowed
from parley.storage.v1.events_pb2 import (
    AccountErasureDue,
    LogDeletionDue,
    SessionRevocationDue,
    SessionStepUpDue,
    SourceSlowdownDue,
)

from parley_auth.accounts import AccountDirectory
from parley_auth.anomaly_evidence import EvidenceRules
from parley_auth.audit_trail import AuditTrail
from parley_auth.lockout import LockoutBook
from parley_auth.sessions import Session, SessionBook
from parley_core.actor import Actor
from parley_core.bus import ReceivedEvent, Refused, RetryLater
from parley_core.bus_events import known_payloads
from parley_core.envelope import NewEvent
from parley_core.errors import Unavailable
from parley_core.event_log import EventLog
from parley_core.log_deletion import ERASURE, DeletionRefused, LoggedEventToDelete, delete_checked, personal_data_of
from parley_core.markers import account_erasure_marker
from parley_core.runner import RunContext
from parley_core.sources import budget_key
from parley_core.topology import username_subject

MAX_SOURCE = 256
MAX_SLOWDOWN_S = 86400.0
USER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
USERNAME_KEY = re.compile(r"[0-9a-f]{64}")  # usernames.username_key: a SHA-256 in hex


class NoEvidenceYet(Exception):
    """A detector's response whose evidence auth does not hold yet: redelivered once, then refused."""


class AuthHost(Protocol):
    """What the handler uses of the auth servicer (service.AuthApp), named here so that this
    module does not import the servicer that imports it: the projection's state, the log, the
    audit trail, and the servicer's responses to a detector's finding."""

    accounts: AccountDirectory
    sessions: SessionBook
    lockouts: LockoutBook
    evidence: EvidenceRules
    erased_users: set[str]
    erasure_requests: set[str]
    erasure_markers: set[str]
    username_holders: dict[str, str]

    @property
    def ctx(self) -> RunContext: ...
    @property
    def events(self) -> EventLog: ...
    @property
    def audit(self) -> AuditTrail: ...
    async def require_step_up(self, session: Session, reason: str, anomaly_event_id: str) -> None: ...
    async def slow_source(self, slowed: SourceSlowed, event_id: str) -> None: ...
    async def revoke_for_anomaly(self, session: Session, reason: str) -> None: ...


class StorageDue:
    """The handler of auth's durable consumer of its due facts on STORE."""

    def __init__(self, app: AuthHost) -> None:
        self._app = app

    async def handle(self, batch: Sequence[ReceivedEvent]) -> None:
        for event, payload in known_payloads(batch):
            if isinstance(payload, AccountErasureDue):
                await self._erased(payload, event)
            elif isinstance(payload, LogDeletionDue):
                await self._delete(payload, event)
            elif isinstance(payload, SessionRevocationDue):
                await self._revoke(payload, event)
            elif isinstance(payload, SourceSlowdownDue):
                await self._slow(payload, event)
            elif isinstance(payload, SessionStepUpDue):
                await self._step_up(payload, event)

    async def _step_up(self, due: SessionStepUpDue, fact: ReceivedEvent) -> None:
        session = self._app.sessions.get(due.session_id)
        if session is None or session.user_id != due.user_id:
            raise Refused(f"no session {due.session_id!r} of user {due.user_id!r} to step up")
        if session.revoked or session.step_up_required:
            return  # carried out already, or moot
        await self._require_session_evidence(session, "step-up", fact)
        try:
            await self._app.require_step_up(
                session, due.reason or f"anomaly {due.anomaly_event_id}", due.anomaly_event_id
            )
        except Unavailable as exc:  # the audit chain refused the record: nothing was changed
            raise RetryLater(str(exc)) from exc

    async def _require_session_evidence(self, session: Session, what: str, fact: ReceivedEvent) -> None:
        """A rule that names a session could have named this one now (anomaly_evidence.py)."""
        if self._app.evidence.session_evidence(session, time.time()) is None:
            await self._no_evidence(
                what,
                session.user_id,
                fact,
                f"session {session.session_id} started from an address its account had used before and was"
                " not used from a second one lately",
            )

    async def _no_evidence(self, what: str, user_id: str, fact: ReceivedEvent, why: str) -> None:
        """Looked at twice, a moment apart (a failure is counted on AUTH just after its audit
        record, which the detector reads): then refused on the audit trail and parked."""
        if fact.num_delivered < 2:
            raise NoEvidenceYet(f"no evidence for the {what} yet")
        await self._refuse(
            "anomaly_response_refused", user_id, fact, f"no evidence for the {what} in auth's records: {why}"
        )

    async def _delete(self, due: LogDeletionDue, fact: ReceivedEvent) -> None:
        """Delete the erased account's own events from AUTH, each checked, or none of them."""
        user_id = due.user_id

        def theirs(item: LoggedEventToDelete) -> None:
            if personal_data_of(item.envelope, item.payload) != user_id:
                raise DeletionRefused(f"AUTH #{item.seq} ({item.envelope.event_type}) is not {user_id}'s own data")

        try:
            if due.stream != "AUTH" or due.reason != ERASURE:
                raise DeletionRefused(
                    f"auth deletes from AUTH for an erasure only, not {due.reason!r} on {due.stream!r}"
                )
            if user_id not in self._app.erased_users:
                raise DeletionRefused(f"account {user_id!r} was not erased by auth")
            refs = [(int(ref.stream_seq), ref.event_id) for ref in due.events]
            await delete_checked(self._app.ctx.bus.js, "AUTH", refs, theirs, user_id=user_id)
        except DeletionRefused as exc:
            await self._refuse("log_deletion_refused", user_id, fact, str(exc))

    async def _refuse(self, kind: str, user_id: str, fact: ReceivedEvent, why: str) -> NoReturn:
        """A security event on the audit chain, then the fact is parked; nothing else changes."""
        detail = f"storage's fact STORE #{fact.stream_seq} (by {_who(fact)}): {why}"
        try:
            await self._app.audit.write(kind, actor=Actor.service("auth"), user_id=user_id, detail=detail[:500])
        except Unavailable as exc:  # the refusal is recorded before the fact is parked
            raise RetryLater(str(exc)) from exc
        raise Refused(why)

    async def _slow(self, due: SourceSlowdownDue, fact: ReceivedEvent) -> None:
        """A detection's slow-the-source response: logins from the address wait until the time
        the detector chose (a day at most, so a forged fact cannot lock an address out for good),
        and only an address auth itself counted a spraying's failed logins from."""
        if not due.source or len(due.source) > MAX_SOURCE or not due.anomaly_event_id:
            raise Refused(f"{due.source!r} is not a client address with the anomaly that asks it")
        until = min(due.until_unix, time.time() + MAX_SLOWDOWN_S)
        if self._app.lockouts.slow_down_answered(budget_key(due.source), until):
            return  # carried out already (a repeated fact, or a redelivery), or lifted since
        if self._app.evidence.spraying_evidence(self._app.lockouts, budget_key(due.source), time.time()) is None:
            accounts = self._app.evidence.windows.spraying_accounts
            why = f"fewer than {accounts} accounts failed a login from {due.source} lately"
            await self._no_evidence("slow-down", "", fact, why)
        slowed = SourceSlowed(
            source=due.source, until_unix=until, reason=due.reason[:300], anomaly_event_id=due.anomaly_event_id
        )
        try:
            await self._app.slow_source(slowed, event_id=f"{due.anomaly_event_id}-slowed")
        except Unavailable as exc:  # the audit chain refused the record: nothing was changed
            raise RetryLater(str(exc)) from exc

    async def _revoke(self, due: SessionRevocationDue, fact: ReceivedEvent) -> None:
        """A detection's response (storage's detector, parley_storage.detection): the session is
        revoked with the anomaly's reason, on the SEC trail as any revocation. Only the session's
        own account's, only one a rule could have named, and only once (a revoked session is left
        as it is)."""
        session = self._app.sessions.get(due.session_id)
        if session is None or session.user_id != due.user_id:
            raise Refused(f"no session {due.session_id!r} of user {due.user_id!r} to revoke")
        if session.revoked:
            return
        await self._require_session_evidence(session, "revocation", fact)
        try:
            await self._app.revoke_for_anomaly(session, due.reason or f"anomaly {due.anomaly_event_id}")
        except Unavailable as exc:  # the audit chain refused the record: nothing was changed
            raise RetryLater(str(exc)) from exc

    async def _erased(self, due: AccountErasureDue, fact: ReceivedEvent) -> None:
        if not USER_ID.fullmatch(due.user_id) or not USERNAME_KEY.fullmatch(due.username_key):
            raise Refused(f"{due.user_id!r} / {due.username_key!r} is not a user id and a username key")
        marker = account_erasure_marker(due.user_id, due.username_key)
        if marker.event_id in self._app.erasure_markers:
            return  # marked already: a repeated fact, or a redelivery
        if due.user_id not in self._app.erasure_requests:
            await self._refuse(
                "account_erasure_refused", due.user_id, fact, "no erasure of this account was requested through auth"
            )
        holder = self._app.username_holders.get(due.username_key)
        if holder is not None and holder != due.user_id:
            raise Refused(f"username {due.username_key} belongs to {holder}, not to the erased {due.user_id}")
        event = NewEvent(
            aggregate_type="username",
            aggregate_id=due.username_key,
            payload=AccountErased(user_id=due.user_id),
            actor=Actor.service("auth"),
            event_id=marker.event_id,
        )
        account = self._app.accounts.by_id(due.user_id)
        detail = f"on storage's erasure fact STORE #{fact.stream_seq} (by {_who(fact)})"
        try:
            async with self._app.audit.recorded(
                "account_erased",
                actor=Actor.service("auth"),
                user_id=due.user_id,
                username=account.username if account is not None else "",
                detail=detail,
            ):
                # The name's subject holds its registration, or nothing (a hole of a re-seeded log).
                await self._app.events.append_after_last(username_subject(due.username_key), event)
        except Unavailable as exc:  # the audit chain refused the record: nothing was changed
            raise RetryLater(str(exc)) from exc


def _who(fact: ReceivedEvent) -> str:
    return str(Actor.parse(fact.envelope.actor)) or "unknown"
