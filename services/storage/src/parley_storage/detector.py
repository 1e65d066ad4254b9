"""Storage's anomaly detector: follows the streams storage reads and records what the rules find.

Why in storage: it already reads every stream (its credentials reach nothing new), and it already
records facts for other owners to act on. The detector writes only on storage's own STORE tree:
`AnomalyDetected` on parley.storage.anomaly.<kind>.<key>, and, when a rule's response is to revoke
the session, require a step-up of it or slow the source down, a `SessionRevocationDue`
(parley.storage.due.auth.revoke.<id>), `SessionStepUpDue` (parley.storage.due.auth.stepup.<id>) or
`SourceSlowdownDue` (parley.storage.due.auth.slow.<source>) fact, which auth (the one writer of
sessions and lockouts) carries out through its existing durable consumer of its due facts.

Event-sourced like the rest: at start it reads its own findings, then replays each stream from
its start into the rules (parley_storage.detection), which are timed by the events' own clocks. A
finding's id comes from the events that made it, so what was recorded before a restart is found
again and not recorded twice; a rule that fires on events older than RESPONSE_MAX_AGE_S records
the finding but asks for no response (the session it names is long gone or was judged already):
detection/findings.py decides what is recorded, codec.py writes it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from google.protobuf.message import Message
from parley.auth.v1.events_pb2 import (
    PasswordChanged,
    RecoveryCodesRegenerated,
    RefreshTokenRotated,
    SecurityEventRecorded,
    SessionRevoked,
    SessionStarted,
    TotpEnrolled,
    TotpReset,
    UserRegistered,
)
from parley.messaging.v1.events_pb2 import ChannelCreated, ChannelRetentionSet, MemberJoined, MessagePosted
from parley.patch.v1.events_pb2 import RolloutApproved, RolloutPlanned
from parley.storage.v1.events_pb2 import RetentionPolicySet, UserDataErased, UserDataExported
from prometheus_client import Counter

from parley_core.actor import Actor
from parley_core.bus import EventBus, ReceivedEvent
from parley_core.envelope import UnknownEventType
from parley_core.synthetic import is_synthetic_account
from parley_core.topology import (
    ANOMALY_FILTER,
    AUTH_FILTER,
    CHANNELS_FILTER,
    PATCH_FILTER,
)
from parley_storage import codec
from parley_storage.detection import Anomaly, DetectionSettings, Rules
from parley_storage.detection.findings import Finding, decide_finding
from parley_storage.handed_over import HandedOverStream
from parley_storage.store_log import STORAGE

log = logging.getLogger(__name__)

CATCH_UP_TIMEOUT_S = 60.0
# The sensitive changes an account makes itself (the envelope's actor is the account).
SENSITIVE: dict[type[Message], str] = {
    PasswordChanged: "password changed",
    TotpEnrolled: "second factor enrolled",
    TotpReset: "second factor reset",
    RecoveryCodesRegenerated: "recovery codes regenerated",
}
Observer = Callable[[ReceivedEvent], Awaitable[None]]
# What a stream's handler found in one event: most rules find one anomaly at most, some several.
Found = Anomaly | Sequence[Anomaly] | None


def occurred_at(event: ReceivedEvent) -> float:
    stamp = event.envelope.occurred_at
    return stamp.seconds + stamp.nanos / 1e9


class AnomalyDetector:
    """Feeds the rules from the streams and records their findings (and responses) on STORE."""

    def __init__(
        self, bus: EventBus, settings: DetectionSettings | None = None, *, counted: Counter | None = None
    ) -> None:
        self.bus = bus
        self._counted = counted
        self.settings = settings or DetectionSettings()
        self.rules = Rules(self.settings)
        self.recorded: set[str] = set()
        self.found: list[Anomaly] = []
        # MSG after start comes from the archive consumer (StorageApp hands it its batches).
        self.messages = HandedOverStream(
            bus, stream="MSG", filter_subject=CHANNELS_FILTER, observe=self._guarded(self._messages)
        )

    async def start(self) -> None:
        """Knows its own findings first, then joins the process's replays of the streams it
        watches (EventBus.follow; the service starts them once every projection is added), and
        reads MSG's history up to now (later messages come from the archive: handed_over)."""
        own = await self.bus.replay(stream="STORE", filter_subject=ANOMALY_FILTER, handler=self._own)
        await own.wait_caught_up(CATCH_UP_TIMEOUT_S)
        for stream, filter_subject, handler in (
            ("SEC", "parley.sec.login_failed.>", self._security),
            ("AUTH", AUTH_FILTER, self._auth),  # users and sessions, in the order auth wrote them
            ("STORE", "parley.storage.>", self._storage),
            ("PATCH", PATCH_FILTER, self._patch),
        ):
            self.bus.follow(stream=stream, filter_subject=filter_subject, handler=self._guarded(handler))
        await self.messages.start()

    async def stop(self) -> None:
        await self.messages.stop()

    async def _own(self, event: ReceivedEvent) -> None:
        self.recorded.add(event.envelope.event_id)

    def _guarded(self, handler: Callable[[ReceivedEvent, Message], Found]) -> Observer:
        async def observe(event: ReceivedEvent) -> None:
            try:
                payload = event.payload
            except UnknownEventType:
                return
            found = handler(event, payload)
            for anomaly in (found,) if isinstance(found, Anomaly) else found or ():
                try:
                    await self._record(anomaly)
                except Exception:
                    # Recording is I/O (appends to STORE), not the projection: a finding the log
                    # did not take is logged (the warning above names it), and the streams'
                    # replays, which other projections share, go on.
                    log.exception("anomaly not recorded", extra={"kind": anomaly.kind, "subject": anomaly.subject})

        return observe

    # -- the streams, translated into the rules' calls -----------------------------------------

    def _security(self, event: ReceivedEvent, payload: Message) -> Anomaly | None:
        if isinstance(payload, SecurityEventRecorded) and payload.kind == "login_failed":
            return self.rules.login_failed(
                at=occurred_at(event),
                source=payload.source,
                username=payload.username,
                event_id=event.envelope.event_id,
            )
        return None

    def _auth(self, event: ReceivedEvent, payload: Message) -> Found:
        at, event_id = occurred_at(event), event.envelope.event_id
        if isinstance(payload, UserRegistered):
            synthetic = is_synthetic_account(
                username=payload.username, registered_by=str(Actor.parse(event.envelope.actor))
            )
            return self.rules.account_registered(at=at, user_id=payload.user_id, event_id=event_id, synthetic=synthetic)
        if isinstance(payload, SessionStarted):
            return self.rules.session_started(
                at=at, session_id=payload.session_id, user_id=payload.user_id, source=payload.source, event_id=event_id
            )
        if isinstance(payload, RefreshTokenRotated):
            return self.rules.session_refreshed(
                at=at, session_id=payload.session_id, user_id=payload.user_id, source=payload.source, event_id=event_id
            )
        if isinstance(payload, SessionRevoked):
            self.rules.session_ended(session_id=payload.session_id)
            if payload.reason == f"revoked by user:{payload.user_id}":
                return self.rules.sensitive_change(
                    at=at, user_id=payload.user_id, what="a session revoked", event_id=event_id
                )
            return None
        what = SENSITIVE.get(type(payload))
        user_id = getattr(payload, "user_id", "")
        if what is not None and user_id and Actor.parse(event.envelope.actor) == Actor.user(user_id):
            return self.rules.sensitive_change(at=at, user_id=user_id, what=what, event_id=event_id)
        return None

    def _messages(self, event: ReceivedEvent, payload: Message) -> Found:
        at, event_id = occurred_at(event), event.envelope.event_id
        if isinstance(payload, MessagePosted):
            rate = self.rules.message_posted(
                at=at, sender_id=payload.sender_id, event_id=event_id, channel_id=payload.channel_id
            )
            many = self.rules.direct_message(
                at=at, sender_id=payload.sender_id, channel_id=payload.channel_id, event_id=event_id
            )
            return [a for a in (rate, many) if a is not None]
        if isinstance(payload, MemberJoined):
            return self.rules.member_joined(
                at=at, user_id=payload.user_id, channel_id=payload.channel_id, event_id=event_id
            )
        if isinstance(payload, ChannelCreated) and payload.direct:
            members = frozenset((payload.creator_id, *payload.member_ids))
            self.rules.direct_channel_created(channel_id=payload.channel_id, members=members)
        if isinstance(payload, ChannelRetentionSet):
            return self._retention_set(event, payload)
        return None

    def _retention_set(self, event: ReceivedEvent, payload: ChannelRetentionSet | RetentionPolicySet) -> Anomaly | None:
        return self.rules.retention_set(
            at=occurred_at(event),
            actor=payload.set_by or _person(event.envelope.actor),
            channel_id=payload.channel_id,
            days=payload.days,
            event_id=event.envelope.event_id,
        )

    def _storage(self, event: ReceivedEvent, payload: Message) -> Anomaly | None:
        at, event_id = occurred_at(event), event.envelope.event_id
        if isinstance(payload, UserDataErased):
            return self.rules.user_erased(
                at=at,
                actor=payload.erased_by or _person(event.envelope.actor),
                user_id=payload.user_id,
                event_id=event_id,
            )
        if isinstance(payload, RetentionPolicySet):  # an older storage's record of a policy
            return self._retention_set(event, payload)
        if isinstance(payload, UserDataExported) and payload.exported_by == payload.user_id:
            return self.rules.sensitive_change(
                at=at, user_id=payload.user_id, what="data exported", event_id=event_id, read_beside_auth=True
            )
        return None

    def _patch(self, event: ReceivedEvent, payload: Message) -> Found:
        event_id = event.envelope.event_id
        if isinstance(payload, RolloutPlanned):
            self.rules.rollout_planned(
                at=payload.at, rollout_id=payload.rollout_id, actor=payload.actor, event_id=event_id
            )
        elif isinstance(payload, RolloutApproved):
            return self.rules.rollout_approved(
                at=payload.at, rollout_id=payload.rollout_id, actor=payload.actor, event_id=event_id
            )
        return None

    # -- recording ----------------------------------------------------------------------------

    async def _record(self, anomaly: Anomaly) -> None:
        self.found.append(anomaly)
        if anomaly.event_id in self.recorded:
            return  # found again by a replay after a restart
        facts, recorded = decide_finding(
            anomaly,
            configured=self.settings.response(anomaly.kind),
            now=time.time(),
            slow_source_s=self.settings.slow_source_s,
        )
        log.warning("anomaly detected", extra={"kind": anomaly.kind, "subject": anomaly.subject, "why": anomaly.why})
        for fact in facts:  # the finding, then what auth must do about it
            await self._append(fact)
            if fact is recorded:
                self.recorded.add(anomaly.event_id)
                if self._counted is not None:
                    self._counted.labels(anomaly.kind, recorded.response).inc()

    async def _append(self, finding: Finding) -> None:
        """Retried while NATS is away (a finding must not be lost to a blip); the fixed event id
        makes a retry of an append that did land a duplicate the server drops."""
        subject, event = codec.subject_of(finding), codec.new_event(finding, STORAGE)
        delay = 0.2
        for attempt in range(6):
            try:
                await self.bus.append(subject, event, aggregate_version=1, expected_last_subject_seq=None)
                return
            except Exception:
                if attempt == 5:
                    log.exception("a finding was not recorded", extra={"subject": subject})
                    return
                await asyncio.sleep(delay)
                delay *= 2


def _person(envelope_actor: str) -> str:
    """Who, as the payloads name people (a bare user id), from an envelope of any age."""
    actor = Actor.parse(envelope_actor)
    return actor.user_id or str(actor)
