"""Every channel as the MSG stream says: the projection messaging decides on and answers from.

State from events and nothing else (no I/O): `apply_received` takes a stored event (its payload
opened once, by the bus), codec.py
turns it into the domain's, and the channel folds it (`Channel.apply`, one table).
"""

from __future__ import annotations

from parley_core.bus_events import ReceivedEvent
from parley_core.envelope import UnknownEventType
from parley_core.errors import FailedPrecondition, NotFound
from parley_messaging.channel_state import Invitation
from parley_messaging.codec import from_proto
from parley_messaging.domain import Channel
from parley_messaging.events import ChannelCreated, ChannelEvent
from parley_messaging.fold import NOWHERE, Recorded


class ChannelDirectory:
    """Every channel, rebuilt from the MSG stream."""

    def __init__(self) -> None:
        self._channels: dict[str, Channel] = {}

    def get(self, channel_id: str) -> Channel:
        channel = self._channels.get(channel_id)
        if channel is None:
            raise NotFound(f"no channel with id {channel_id!r}")
        return channel

    def find(self, channel_id: str) -> Channel | None:
        return self._channels.get(channel_id)

    def __contains__(self, channel_id: str) -> bool:
        return channel_id in self._channels

    def create(
        self,
        channel_id: str,
        name: str,
        creator_id: str,
        stream_seq: int,
        *,
        encrypted: bool = False,
        private: bool = False,
        direct: bool = False,
        others: tuple[str, ...] = (),
        hide_history_before_join: bool = False,
    ) -> Channel:
        """A channel as its creation event makes it (for tests that start from one)."""
        created = ChannelCreated(
            channel_id=channel_id,
            name=name,
            creator_id=creator_id,
            encrypted=encrypted,
            private=private,
            direct=direct,
            member_ids=others,
            hide_history_before_join=hide_history_before_join,
        )
        self.apply(channel_id, created, Recorded(stream_seq, 1))
        return self._channels[channel_id]

    def apply(self, channel_id: str, event: ChannelEvent | None, at: Recorded = NOWHERE) -> None:
        """Fold one event of the channel `channel_id` (None: one this release cannot read)."""
        if isinstance(event, ChannelCreated):
            self._channels[channel_id] = Channel.created(event, at)
        else:
            self.get(channel_id).apply(event, at)

    def apply_received(self, received: ReceivedEvent) -> None:
        """A channel event as the MSG stream holds it."""
        try:
            event = from_proto(received.payload)
        except UnknownEventType:
            event = None  # a newer writer's event (during a roll-out): its position still counts
        envelope = received.envelope
        at = Recorded(received.stream_seq, envelope.aggregate_version, envelope.event_id)
        self.apply(envelope.aggregate_id, event, at)

    def of_member(self, user_id: str) -> list[Channel]:
        return [c for c in self._channels.values() if user_id in c.members]

    def invitations_of(self, user_id: str) -> list[tuple[Channel, Invitation]]:
        """`user_id`'s pending invitations, newest first."""
        found = [(c, i) for c in self._channels.values() if (i := c.pending_invitation(user_id)) is not None]
        return sorted(found, key=lambda pair: pair[1].position, reverse=True)

    def named_for(self, name: str, user_id: str) -> Channel:
        """The one channel called `name` that `user_id` may see: public, or one they are in or
        invited to. Several: an error naming each one's id (the caller picks one)."""
        found = [
            c
            for c in self._channels.values()
            if c.name == name and not c.direct and (not c.private or user_id in c.members or user_id in c.invited)
        ]
        if not found:
            raise NotFound(f"no channel named {name!r} that you may join (a private one needs an invitation)")
        if len(found) > 1:
            ids = ", ".join(f"{c.channel_id} ({len(c.members)} members)" for c in found)
            raise FailedPrecondition(f"{len(found)} channels are named {name!r}: {ids}; join one by its id")
        return found[0]
