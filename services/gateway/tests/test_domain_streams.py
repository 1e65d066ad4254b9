"""What a live stream follows and receives (parley_gateway.domain.streams), without servers: the
channels and positions a Subscribe call starts from, and which events reach its client."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from parley_core.errors import DomainError, PermissionDenied, ResourceExhausted
from parley_core.visibility import EVERYTHING, HistoryView
from parley_gateway.domain.admission import LiveStreamCaps
from parley_gateway.domain.streams import LiveScope, plan_stream
from parley_gateway.limits import GatewayLimits

CAPS = LiveStreamCaps(GatewayLimits(live_channels_per_stream=3))
# Two channels: "open" shows everything; "hidden" hides what came before the member's join,
# which was message #5, at log position 40.
MINE = {"open": EVERYTHING, "hidden": HistoryView(first_seq=5, first_position=40)}


def test_a_stream_follows_every_channel_of_the_caller_when_none_is_named() -> None:
    plan = plan_stream(MINE, asked=[], resume={}, live_from=100, caps=CAPS)
    assert plan.channel_ids == ["hidden", "open"]
    assert plan.after == {"hidden": 100, "open": 100}  # from the feed's position on
    assert plan.backlog == {}


def test_a_resumed_channel_reads_its_backlog_up_to_the_feeds_position() -> None:
    plan = plan_stream(MINE, asked=["open"], resume={"open": 70, "hidden": 10}, live_from=100, caps=CAPS)
    assert plan.channel_ids == ["open", "hidden"]  # in the order asked, each once
    # A hidden history starts at the join (position 40), wherever the client asks to resume.
    assert plan.backlog == {"open": (70, 100), "hidden": (39, 100)}
    assert plan.after == {"open": 100, "hidden": 100}
    assert plan.views == MINE


def test_a_resume_past_the_feeds_position_starts_there() -> None:
    plan = plan_stream(MINE, asked=[], resume={"open": 120}, live_from=100, caps=CAPS)
    assert plan.after == {"open": 120}


def test_a_stream_over_someone_elses_channel_or_too_many_is_refused() -> None:
    with pytest.raises(PermissionDenied, match=r"^not a member of channel\(s\): theirs$"):
        plan_stream(MINE, asked=["open", "theirs"], resume={}, live_from=0, caps=CAPS)
    with pytest.raises(ResourceExhausted, match="at most 3 channels per live stream"):
        plan_stream(MINE, asked=["a", "b", "c", "d"], resume={}, live_from=0, caps=CAPS)


@dataclass(frozen=True)
class Event:
    channel_id: str
    position: int
    client_event: str | None = "shown"
    about_seq: int = 0
    removed_user: str = ""


@dataclass
class Inbox:
    offered: list[str] = field(default_factory=list)
    ended: list[DomainError] = field(default_factory=list)

    def offer(self, event: str) -> None:
        self.offered.append(event)

    def end(self, error: DomainError) -> None:
        self.ended.append(error)


def scope(inbox: Inbox) -> LiveScope[str]:
    return LiveScope(user_id="alice", views=dict(MINE), after={"open": 50, "hidden": 50}, buffer=inbox)


def test_a_stream_receives_only_what_came_after_its_start_and_its_member_may_see() -> None:
    inbox = Inbox()
    stream = scope(inbox)
    stream.deliver(Event("open", 50, "read from the log already"))
    stream.deliver(Event("open", 51, "new"))
    stream.deliver(Event("open", 52, None))  # an event clients are not shown
    stream.deliver(Event("hidden", 53, "an edit of a message from before the join", about_seq=4))
    stream.deliver(Event("hidden", 54, "a reaction to a message since", about_seq=5))
    assert inbox.offered == ["new", "a reaction to a message since"]
    assert inbox.ended == []


def test_the_members_removal_is_shown_then_ends_the_stream() -> None:
    inbox = Inbox()
    stream = scope(inbox)
    stream.deliver(Event("open", 60, "bob left", removed_user="bob"))
    assert inbox.ended == []
    stream.deliver(Event("open", 61, "alice was kicked", removed_user="alice"))
    assert inbox.offered == ["bob left", "alice was kicked"]
    assert [str(e) for e in inbox.ended] == ["you are no longer in channel open"]
    assert isinstance(inbox.ended[0], PermissionDenied)
