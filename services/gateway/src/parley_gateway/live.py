"""One client's live stream: which events it sees, how they look, and the bound on its backlog."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from parley.common.v1.envelope_pb2 import EventEnvelope
from parley.gateway.v1 import gateway_pb2
from parley.messaging.v1 import messaging_pb2
from parley.messaging.v1.events_pb2 import (
    ChannelCreated,
    ChannelRenamed,
    ChannelTopicChanged,
    MemberBanned,
    MemberInvited,
    MemberJoined,
    MemberKicked,
    MemberLeft,
    MemberRoleChanged,
    MemberUnbanned,
    MessageEdited,
    MessagePosted,
    MessageRedacted,
    ReactionAdded,
    ReactionRemoved,
    ReadMarkerMoved,
)

from parley_core.chat_messages import chat_message
from parley_core.contracts import POSTED_FIELDS
from parley_core.envelope import UnknownEventType, open_payload
from parley_core.errors import DomainError, ResourceExhausted
from parley_core.same_named import same_named
from parley_core.visibility import HistoryView
from parley_gateway.domain.streams import LiveScope


def client_event(payload: Message, position: int) -> gateway_pb2.ClientEvent | None:
    """The client's view of one channel event at stream `position`; None for events clients don't see."""
    if isinstance(payload, MessagePosted):
        # Filled in place, the event's own Timestamp copied: the one event each message brings.
        event = gateway_pb2.ClientEvent()
        chat_message(
            **same_named(payload, *POSTED_FIELDS), sent_at=payload.sent_at, position=position, into=event.message
        )
        return event
    if isinstance(payload, MessageEdited):
        # Clients tag it "(edited)" at once, as history does after a reload.
        edited = _updated(payload, position, sender_id=payload.editor_id, body=payload.body, edited=True)
        return gateway_pb2.ClientEvent(updated=edited)
    if isinstance(payload, MessageRedacted):
        return gateway_pb2.ClientEvent(updated=_updated(payload, position, redacted=True))
    if isinstance(payload, ReactionAdded | ReactionRemoved):
        return gateway_pb2.ClientEvent(
            reaction=gateway_pb2.Reaction(
                channel_id=payload.channel_id,
                channel_seq=payload.channel_seq,
                user_id=payload.user_id,
                emoji=payload.emoji,
                removed=isinstance(payload, ReactionRemoved),
                position=position,
            )
        )
    if isinstance(payload, ReadMarkerMoved):
        return gateway_pb2.ClientEvent(
            read_marker=gateway_pb2.ReadMarker(
                channel_id=payload.channel_id,
                user_id=payload.user_id,
                channel_seq=payload.channel_seq,
                position=position,
            )
        )
    if (change := membership_change(payload)) is not None:
        change.position = position
        return gateway_pb2.ClientEvent(membership=change)
    return None


def _updated(payload: MessageEdited | MessageRedacted, position: int, **change: Any) -> messaging_pb2.ChatMessage:
    """The message an edit or a redaction changed, as clients replace it in their timeline."""
    return chat_message(
        channel_id=payload.channel_id,
        message_id=payload.message_id,
        channel_seq=payload.channel_seq,
        position=position,
        **change,
    )


# How each membership or channel change reads as a timeline line: the change's name (a function
# of the event where it carries more), who made it, and the detail shown beside it.
_MEMBERSHIP_LINES: dict[type[Message], tuple[Callable[[Any], str], str, str]] = {
    MemberJoined: (lambda _: "joined", "user_id", ""),
    MemberLeft: (lambda _: "left", "user_id", ""),
    MemberInvited: (lambda _: "invited", "invited_by", ""),
    MemberKicked: (lambda _: "kicked", "kicked_by", "reason"),
    MemberBanned: (lambda _: "banned", "banned_by", "reason"),
    MemberUnbanned: (lambda _: "unbanned", "unbanned_by", ""),
    MemberRoleChanged: (lambda e: f"role:{e.role}", "changed_by", ""),
    ChannelRenamed: (lambda _: "renamed", "renamed_by", "name"),
    ChannelTopicChanged: (lambda _: "topic", "changed_by", "topic"),
}


def membership_change(payload: Message) -> gateway_pb2.MembershipChange | None:
    """Membership and channel changes, one shape for clients to show as a line in the timeline."""
    line = _MEMBERSHIP_LINES.get(type(payload))
    if line is None:
        return None
    name, actor_field, detail_field = line
    event: Any = payload
    return gateway_pb2.MembershipChange(
        channel_id=event.channel_id,
        user_id=getattr(event, "user_id", ""),  # channel changes are about no one member
        change=name(event),
        actor_id=getattr(event, actor_field),
        detail=getattr(event, detail_field) if detail_field else "",
    )


_REMOVALS = (MemberLeft, MemberKicked, MemberBanned)
_ABOUT_A_MESSAGE = (MessagePosted, MessageEdited, MessageRedacted, ReactionAdded, ReactionRemoved, ReadMarkerMoved)
# Events that bring someone into a channel their streams do not follow yet (invited, joined from
# another device, a conversation someone else started): the feed opens these for every channel.
_ARRIVALS = (ChannelCreated, MemberInvited, MemberJoined)
ARRIVAL_TYPES = frozenset(kind.DESCRIPTOR.full_name for kind in _ARRIVALS)


def arrivals_of(payload: Message) -> tuple[str, ...]:
    if isinstance(payload, ChannelCreated):
        return (payload.creator_id, *payload.member_ids)
    if isinstance(payload, MemberInvited | MemberJoined):
        return (payload.user_id,)
    return ()


@dataclass(frozen=True, slots=True)
class ChannelEvent:
    """One channel event, opened once however many streams it is handed to."""

    channel_id: str
    position: int
    client_event: gateway_pb2.ClientEvent | None  # None: clients are not shown this event
    about_seq: int = 0  # the message (channel_seq) it is about; 0 for membership and channel changes
    removed_user: str = ""  # whom it removes from the channel (left, kicked, banned); their stream ends
    arrivals: tuple[str, ...] = ()  # whom it brings into the channel (invited, joined, members at creation)
    creator: str = ""  # who created the channel, for a ChannelCreated

    def seen_by(self, view: HistoryView) -> bool:
        return view.shows_event(self.position, self.about_seq)

    def arrival_of(self, user_id: str) -> gateway_pb2.ClientEvent:
        """What a stream of `user_id`, one of `arrivals`, is told: their own invitation or join;
        for a channel created with them in it, that they joined it."""
        if self.client_event is not None:
            return self.client_event
        change = gateway_pb2.MembershipChange(
            channel_id=self.channel_id, user_id=user_id, change="joined", actor_id=self.creator, position=self.position
        )
        return gateway_pb2.ClientEvent(membership=change)


def channel_event_of(
    envelope: EventEnvelope, position: int, *, opened: Callable[[], Message] | None = None
) -> ChannelEvent:
    """`opened`: the payload as the caller has it open already (the feed's replay opened it to
    check it, ReceivedEvent.payload), so that it is decoded once; else it is decoded here."""
    try:
        payload = open_payload(envelope) if opened is None else opened()
    except UnknownEventType:
        return ChannelEvent(envelope.aggregate_id, position, None)
    return ChannelEvent(
        channel_id=envelope.aggregate_id,
        position=position,
        client_event=client_event(payload, position),
        about_seq=payload.channel_seq if isinstance(payload, _ABOUT_A_MESSAGE) else 0,
        removed_user=payload.user_id if isinstance(payload, _REMOVALS) else "",
        arrivals=arrivals_of(payload),
        creator=payload.creator_id if isinstance(payload, ChannelCreated) else "",
    )


def view_of(channel: messaging_pb2.Channel) -> HistoryView:
    """What the caller may see of `channel`, as messaging says (parley_core.visibility: the one rule)."""
    return HistoryView(first_seq=max(1, channel.visible_from_seq), first_position=channel.visible_from_position)


@dataclass(frozen=True)
class _Overflowed:
    pass


@dataclass(frozen=True)
class _Ended:
    error: DomainError


class LiveBuffer:
    """At most `capacity` events wait for a slow client; one more and the stream ends in a resync.

    Dropping events would make a gap the client cannot see; blocking would push the backlog into
    the NATS client's buffers. Ending the stream with RESOURCE_EXHAUSTED tells the client to
    reload history and resume, and keeps the gateway's memory per stream bounded.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.overflowed = False
        # Room for `capacity` events, the overflow marker and an end marker.
        self._queue: asyncio.Queue[gateway_pb2.ClientEvent | _Overflowed | _Ended] = asyncio.Queue(maxsize=capacity + 2)
        self._ended = False

    def end(self, error: DomainError) -> None:
        """End the stream with `error` after the events already queued."""
        if not self._ended and not self.overflowed:
            self._ended = True
            self._queue.put_nowait(_Ended(error))

    def offer(self, event: gateway_pb2.ClientEvent) -> None:
        if self.overflowed or self._ended:
            return
        if self._queue.qsize() >= self.capacity:
            self.overflowed = True
            self._queue.put_nowait(_Overflowed())
            return
        self._queue.put_nowait(event)

    def pending(self) -> int:
        return self._queue.qsize()

    async def take(self) -> gateway_pb2.ClientEvent:
        item = await self._queue.get()
        if isinstance(item, _Ended):
            raise item.error
        if isinstance(item, _Overflowed):
            raise ResourceExhausted(
                f"live stream fell more than {self.capacity} events behind; "
                "reload history and subscribe again with resume positions"
            )
        return item


class LiveSubscriber(LiveScope[gateway_pb2.ClientEvent]):
    """One client's live stream as the channel feed sees it (what it receives: LiveScope), with
    the check that ends it when its caller may no longer read."""

    __slots__ = ("check",)
    buffer: LiveBuffer

    def __init__(
        self,
        *,
        user_id: str,
        views: dict[str, HistoryView],
        after: dict[str, int],
        buffer: LiveBuffer,
        check: Callable[[], None],
    ) -> None:
        super().__init__(user_id=user_id, views=views, after=after, buffer=buffer)
        self.check = check  # raises if the caller may no longer read (revoked, disabled, role)

    @property
    def channel_ids(self) -> Iterable[str]:
        return self.views.keys()

    def welcome(self, event: ChannelEvent) -> None:
        """`event` brings this stream's user into a channel the stream does not follow: the client
        is told, to take the channel up (subscribing again with it)."""
        if event.channel_id not in self.views:
            self.buffer.offer(event.arrival_of(self.user_id))

    def recheck(self) -> None:
        """After someone's access was withdrawn: end this stream if it was its caller's."""
        try:
            self.check()
        except DomainError as exc:
            self.buffer.end(exc)
