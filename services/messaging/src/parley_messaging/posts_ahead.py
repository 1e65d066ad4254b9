"""A channel as the posts of a round still on their way will leave it: what the next post of a
pipelined round (EventLog.decide_and_append_each) is decided on, while the projection stays as
the stream has acknowledged it."""

from __future__ import annotations

from collections import ChainMap
from dataclasses import dataclass, fields
from typing import cast

from parley_core.envelope import NewEvent
from parley_core.event_log import Position
from parley_messaging.codec import from_proto
from parley_messaging.domain import Channel
from parley_messaging.events import MessagePosted
from parley_messaging.fold import Recorded
from parley_messaging.messages import MessageRecord


@dataclass
class ChannelAhead(Channel):
    """A round's private view of a channel: its own numbering, version, messages and sends over
    the projection's (ChainMaps whose first map is the round's), which it never changes. A plain
    post's fold changes nothing else; a reply would change its root's record, which is shared."""


_FIELDS = tuple(f.name for f in fields(Channel))


def after_post(channel: Channel, event: NewEvent, at: Position) -> Channel | None:
    """`channel` once the post `event` lands at `at`; None for any other event (the round's
    later commands are then decided one at a time, on the projection)."""
    posted = from_proto(event.payload)
    if not isinstance(posted, MessagePosted) or posted.thread_root_seq:
        return None
    if not isinstance(channel, ChannelAhead):
        shared = {name: getattr(channel, name) for name in _FIELDS}
        # Typed as the dicts they read like: a ChainMap writes to its first map only.
        shared["messages"] = cast(dict[int, MessageRecord], ChainMap({}, channel.messages))
        shared["sends"] = cast(dict[tuple[str, str], int], ChainMap({}, channel.sends))
        channel = ChannelAhead(**shared)
    channel.apply(posted, Recorded(at.last_seq or 0, at.version, event.event_id))
    return channel
