"""What a client's live stream follows and receives (parley_gateway.live, .subscriptions and
.fanout do the protobuf and the I/O): which channels a Subscribe call follows and from where,
and which of a channel's events reach the stream.

A stream joins the channel feed at the feed's position: it reads the log up to there itself (the
backlog of the channels it resumes), the feed after it, so nothing is missed and nothing comes twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from parley_core.errors import DomainError, PermissionDenied
from parley_core.visibility import HistoryView
from parley_gateway.domain.admission import LiveStreamCaps

E = TypeVar("E")  # what the client is shown of an event (the gateway's ClientEvent)
E_contra = TypeVar("E_contra", contravariant=True)
E_co = TypeVar("E_co", covariant=True)


@dataclass(frozen=True)
class StreamPlan:
    """Which channels a new stream follows, in the order asked; each one's view; the position
    after which each channel's events are news to the stream; and, per resumed channel, the
    positions (after, up to] its backlog is read between."""

    channel_ids: list[str]
    views: dict[str, HistoryView]
    after: dict[str, int]
    backlog: dict[str, tuple[int, int]]


def plan_stream(
    mine: Mapping[str, HistoryView],
    *,
    asked: Sequence[str],
    resume: Mapping[str, int],
    live_from: int,
    caps: LiveStreamCaps,
) -> StreamPlan:
    """A stream over the channels `asked` and `resume`d (all of the caller's channels, `mine`,
    when none are), joining the feed at position `live_from`."""
    wanted = list(dict.fromkeys([*asked, *resume])) or sorted(mine)
    caps.check_channels(len(wanted))
    if not_mine := [c for c in wanted if c not in mine]:
        raise PermissionDenied(f"not a member of channel(s): {', '.join(not_mine[:5])}")
    # A hidden history starts at the member's join, wherever the client asks to resume.
    starts = {c: max(resume.get(c, 0), mine[c].first_position - 1) for c in wanted}
    return StreamPlan(
        channel_ids=wanted,
        views={c: mine[c] for c in wanted},
        after={c: max(start, live_from) for c, start in starts.items()},
        backlog={c: (starts[c], live_from) for c in resume},
    )


class Inbox(Protocol[E_contra]):
    """Where a stream's events wait for its client (parley_gateway.live.LiveBuffer)."""

    def offer(self, event: E_contra) -> None: ...

    def end(self, error: DomainError) -> None: ...


class Delivered(Protocol[E_co]):
    """One channel event as the feed hands it out (parley_gateway.live.ChannelEvent)."""

    @property
    def channel_id(self) -> str: ...
    @property
    def position(self) -> int: ...
    @property
    def client_event(self) -> E_co | None: ...  # None: clients are not shown this event
    @property
    def about_seq(self) -> int: ...
    @property
    def removed_user(self) -> str: ...


class LiveScope(Generic[E]):
    """One user's live stream as the feed sees it: its channels, each one's view, and per channel
    the position after which events are new to it (what came up to there it read from the log)."""

    __slots__ = ("after", "buffer", "user_id", "views")

    def __init__(self, *, user_id: str, views: dict[str, HistoryView], after: dict[str, int], buffer: Inbox[E]) -> None:
        self.user_id = user_id
        self.views = views
        self.after = after
        self.buffer = buffer

    def deliver(self, event: Delivered[E]) -> None:
        """What the stream receives of `event`: its client view if its member may see it, then,
        for the member's own removal, the end of the stream."""
        if event.position <= self.after[event.channel_id]:
            return
        shown = event.client_event
        if shown is not None and self.views[event.channel_id].shows_event(event.position, event.about_seq):
            self.buffer.offer(shown)
        if event.removed_user == self.user_id:
            # Membership is checked when a stream opens and followed while it runs: the member is
            # told of their removal (the event above), then the stream ends.
            self.buffer.end(PermissionDenied(f"you are no longer in channel {event.channel_id}"))
