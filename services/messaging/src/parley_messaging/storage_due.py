"""Messaging marks its own channels when storage says an erasure or retention is due there.

Storage writes nothing to MSG. Before it deletes an erased user's posts, or expired texts, from
the log, it records a due fact on its STORE stream (parley.storage.due.messaging.>, the only
part of STORE messaging reads, through its durable consumer `messaging-storage-due`), and
messaging, the channels' one writer, appends the marker there (MessagesErased, MessagesExpired)
with the id parley_core.markers derives from the fact; storage deletes once it holds the marker.

A fact is checked against messaging's own projection first: an erasure marks only the erased
user's posts, and only once auth recorded the erasure's request (AccountErasureRequested, in
messaging's access view: storage's word alone erases nobody); an expiry only messages of a
channel whose retention policy messaging recorded itself (ChannelRetentionSet, set by the
operator through SetChannelRetention), sent before a cutoff at least that policy's days in the
past by messaging's own clock. A fact that asks for more is refused (parked with the reason): a
stolen storage credential cannot remove another user's messages, recent ones, or any of a
channel no policy covers, through messaging.

Messaging also deletes from MSG, the only NATS user that may, what storage's `LogDeletionDue`
names (parley_core.log_deletion), each event checked against its own stream and channels: for an
erasure auth recorded, only the erased user's own posts and edits; for removed texts, only the
posts and edits of a message that is redacted or gone from its channel (erased or expired);
never a channel's newest event. Anything else is refused whole and parked, and nothing is
deleted.

Idempotent: a channel remembers the marker ids it applied, so a repeated fact, or a redelivery
after a crash, appends nothing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from google.protobuf.message import Message
from parley.messaging.v1.events_pb2 import MessageEdited, MessagePosted, MessagesErased, MessagesExpired
from parley.storage.v1.events_pb2 import ChannelErasureDue, LogDeletionDue, RetentionDue

from parley_core.actor import Actor
from parley_core.bus import ReceivedEvent, Refused
from parley_core.bus_events import known_payloads
from parley_core.envelope import NewEvent
from parley_core.errors import FailedPrecondition
from parley_core.event_log import EventLog
from parley_core.log_deletion import (
    ERASURE,
    REMOVED,
    DeletionRefused,
    EventCheck,
    LoggedEventToDelete,
    delete_checked,
    personal_data_of,
)
from parley_core.markers import Marker, channel_erasure_marker, expiry_marker
from parley_core.runner import RunContext
from parley_core.topology import channel_subject
from parley_messaging.domain import Channel
from parley_messaging.log_tail import ArchivedTail
from parley_messaging.projection import ChannelDirectory

NS_PER_DAY = 86_400 * 10**9
# How far storage's clock may run ahead of messaging's when it decides a cutoff.
CLOCK_SKEW_NS = 5 * 60 * 10**9
# Ids as the services make them, never a subject wildcard or separator.
ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class NotErasedYet(Exception):
    """An erasure fact for an account whose erasure auth has not recorded (in this view, yet)."""


class MessagingHost(Protocol):
    """What the handler uses of the messaging servicer (servicer_base.MessagingBase), named here so
    that this module does not import the servicer that imports it."""

    channels: ChannelDirectory
    log_tail: ArchivedTail

    @property
    def ctx(self) -> RunContext: ...
    @property
    def event_log(self) -> EventLog: ...


class StorageDue:
    """The handler of messaging's durable consumer of its due facts on STORE."""

    def __init__(self, app: MessagingHost, *, now_ns: Callable[[], int] = time.time_ns) -> None:
        self._app = app
        self._now_ns = now_ns

    async def handle(self, batch: Sequence[ReceivedEvent]) -> None:
        """Each fact in turn; a refusal fails the batch, which the consumer then takes one by
        one, parking only the refused fact (the others find their marker applied)."""
        for _, payload in known_payloads(batch):
            if isinstance(payload, ChannelErasureDue):
                await self._erased(payload)
            elif isinstance(payload, RetentionDue):
                await self._expired(payload)
            elif isinstance(payload, LogDeletionDue):
                await self._delete(payload)

    async def _delete(self, due: LogDeletionDue) -> None:
        """Delete the named events from MSG, each checked, or none of them."""
        try:
            if due.stream != "MSG":
                raise DeletionRefused(f"messaging deletes from MSG only, not from {due.stream!r}")
            refs = [(int(ref.stream_seq), ref.event_id) for ref in due.events]
            await delete_checked(self._app.ctx.bus.js, "MSG", refs, self._deletion_check(due), user_id=due.user_id)
        except DeletionRefused as exc:
            raise Refused(str(exc)) from None

    def _deletion_check(self, due: LogDeletionDue) -> EventCheck:
        if due.reason == ERASURE:
            self._require_erasure_requested(due.user_id)

            def theirs(item: LoggedEventToDelete) -> None:
                if personal_data_of(item.envelope, item.payload) != due.user_id:
                    raise DeletionRefused(f"MSG #{item.seq} ({item.envelope.event_type}) is not {due.user_id}'s own")

            return theirs
        if due.reason == REMOVED:
            return self._removed_text
        raise DeletionRefused(f"{due.reason!r} is not a reason messaging deletes events for")

    def _require_erasure_requested(self, user_id: str) -> None:
        """Auth recorded the erasure's request (it is on AUTH before storage records any fact)."""
        if user_id not in self._app.ctx.access.erasure_requests:
            # Not Refused at once: this access view may be a moment behind AUTH (redelivered with
            # a growing pause, parked after max_deliver).
            raise NotErasedYet(f"no erasure of account {user_id!r} was requested through auth")

    def _removed_text(self, item: LoggedEventToDelete) -> None:
        """A post or edit of a message that was redacted, or left its channel (erased, expired)."""
        payload = item.payload
        if not isinstance(payload, MessagePosted | MessageEdited):
            raise DeletionRefused(f"MSG #{item.seq} ({item.envelope.event_type}) is not a message's text")
        channel_id = item.envelope.aggregate_id
        if channel_id not in self._app.channels or item.raw.subject != channel_subject(channel_id):
            raise DeletionRefused(f"MSG #{item.seq} is not on a channel messaging knows")
        channel = self._app.channels.get(channel_id)
        record = channel.messages.get(payload.channel_seq)
        removed = record.current.redacted if record is not None else payload.channel_seq <= channel.last_seq
        if not removed:
            raise DeletionRefused(
                f"message #{payload.channel_seq} of channel {channel.channel_id} was neither redacted nor removed"
            )

    async def _erased(self, due: ChannelErasureDue) -> None:
        _check_ids(due.channel_id, due.user_id)
        self._require_erasure_requested(due.user_id)
        marker = channel_erasure_marker(due.user_id, due.channel_id)
        payload = MessagesErased(channel_id=due.channel_id, user_id=due.user_id, channel_seqs=due.channel_seqs)
        await self._mark(
            due.channel_id, marker, payload, lambda channel: channel.check_erasure(due.user_id, due.channel_seqs)
        )

    async def _expired(self, due: RetentionDue) -> None:
        _check_ids(due.channel_id)
        if due.channel_id not in self._app.channels:
            raise Refused(f"retention of channel {due.channel_id}: no such channel, so no retention policy covers it")
        marker = expiry_marker(due.channel_id, due.channel_seqs)

        def check(channel: Channel) -> None:
            check_retention_policy(channel, due, now_ns=self._now_ns())
            channel.check_expiry(due.channel_seqs, due.sent_before_unix_ns)

        payload = MessagesExpired(
            channel_id=due.channel_id, channel_seqs=due.channel_seqs, retention_days=due.retention_days
        )
        await self._mark(due.channel_id, marker, payload, check)

    async def _mark(self, channel_id: str, marker: Marker, payload: Message, check: Callable[[Channel], None]) -> None:
        event = NewEvent(
            aggregate_type="channel",
            aggregate_id=channel_id,
            payload=payload,
            actor=Actor.service("messaging"),
            event_id=marker.event_id,
        )
        subject = channel_subject(channel_id)
        if channel_id not in self._app.channels:
            # Its creation is a hole in a re-seeded log (its creator was erased): nothing to check
            # against, and storage waits for the marker all the same.
            await self._app.event_log.append_after_last(subject, event)
            return

        await self._app.log_tail.check(self._app.channels.get(channel_id))

        def decide(channel: Channel) -> tuple[list[NewEvent], None]:
            if marker.event_id in channel.markers:
                return [], None  # marked already: a repeated fact, or a redelivery
            try:
                check(channel)
            except FailedPrecondition as exc:
                raise Refused(str(exc)) from None
            return [event], None

        await self._app.event_log.decide_and_append(subject, lambda: self._app.channels.get(channel_id), decide)


def check_retention_policy(channel: Channel, due: RetentionDue, *, now_ns: int) -> None:
    """The policy messaging itself recorded on the channel (ChannelRetentionSet, which only the
    operator or a `retention.manage` holder sets) covers the fact: a policy is set, and the
    cutoff is at least its days in the past by messaging's own clock. The fact's own
    retention_days is storage's word and decides nothing."""
    days = channel.retention_days
    if days < 1:
        raise FailedPrecondition(
            f"retention of channel {channel.channel_id}: no retention policy is recorded for it"
            " (set one with `parley retention`)"
        )
    latest = now_ns - days * NS_PER_DAY + CLOCK_SKEW_NS
    if due.sent_before_unix_ns > latest:
        raise FailedPrecondition(
            f"retention of channel {channel.channel_id}: a cutoff {due.sent_before_unix_ns} is not "
            f"{days} day(s) in the past, as its retention policy says"
        )


def _check_ids(*ids: str) -> None:
    for value in ids:
        if not ID.fullmatch(value):
            raise Refused(f"{value!r} is not an id")
