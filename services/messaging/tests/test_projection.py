"""The channel projection without servers: event sequences, sealed as the MSG stream holds them,
applied through the one dispatch table, and the channel state they leave."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from parley.common.v1.envelope_pb2 import EventEnvelope

from parley_core.bus_events import ReceivedEvent
from parley_core.errors import FailedPrecondition, NotFound
from parley_core.topology import channel_subject
from parley_messaging import codec
from parley_messaging import events as ev
from parley_messaging.channel_state import MODERATOR, OWNER
from parley_messaging.fold import APPLY, Recorded
from parley_messaging.projection import ChannelDirectory
from parley_testing.events import received

C = "c1"


class Log:
    """A channel's events as the stream would number them, applied as the replay applies them."""

    def __init__(self) -> None:
        self.channels = ChannelDirectory()
        self.stream_seq = 0
        self.versions: dict[str, int] = {}

    def append(self, *events: ev.ChannelEvent, skip: int = 0) -> None:
        """`skip`: stream positions and versions taken by events deleted since (an erasure)."""
        for event in events:
            self.stream_seq += 1 + skip
            version = self.versions[event.channel_id] = self.versions.get(event.channel_id, 0) + 1 + skip
            new_event = codec.new_event(event, "test")
            self.channels.apply_received(received(new_event, stream_seq=self.stream_seq, aggregate_version=version))

    def post(self, seq: int, sender: str = "alice", *, key: str = "", root: int = 0, body: str = "") -> None:
        text, key = body or f"text {seq}", key or f"k{seq}"
        self.append(ev.MessagePosted(C, f"m{seq}", sender, seq, text, key, seq * 1000, sender, root))


@pytest.fixture
def log() -> Log:
    log = Log()
    log.append(ev.ChannelCreated(C, "general", "owner"), ev.MemberJoined(C, "alice"), ev.MemberJoined(C, "bob"))
    return log


def test_every_channel_event_has_one_fold_and_one_protobuf_twin() -> None:
    declared = {cls for cls in vars(ev).values() if isinstance(cls, type) and issubclass(cls, ev.ChannelEvent)}
    assert set(APPLY) == set(codec.CHANNEL_EVENTS) == declared - {ev.ChannelEvent}


@pytest.mark.parametrize("cls", sorted(codec.CHANNEL_EVENTS, key=str))
def test_each_event_survives_the_trip_through_protobuf(cls: type[Any]) -> None:
    # events.py's annotations are strings (from __future__ import annotations).
    samples: dict[str, object] = {
        "int": 7,
        "str": "x",
        "bool": True,
        "tuple[str, ...]": ("a", "b"),
        "tuple[int, ...]": (3, 5),
    }
    values = {f.name: samples[str(f.type)] for f in dataclasses.fields(cls)}
    event = cls(**values)
    assert codec.from_proto(codec.to_proto(event)) == event


def test_creation_makes_the_creator_owner_and_a_direct_conversation_private_without_roles() -> None:
    log = Log()
    log.append(ev.ChannelCreated(C, "general", "owner", hide_history_before_join=True))
    log.append(ev.ChannelCreated("d1", "direct", "alice", direct=True, member_ids=("bob",)))
    channel, direct = log.channels.get(C), log.channels.get("d1")
    assert (channel.members, channel.role("owner"), channel.hide_history_before_join) == ({"owner"}, OWNER, True)
    assert (direct.members, direct.private, direct.roles) == ({"alice", "bob"}, True, {})
    assert channel.last_stream_seq == 1
    assert direct.last_stream_seq == 2


def test_an_event_of_an_unknown_channel_is_refused() -> None:
    with pytest.raises(NotFound):
        Log().append(ev.MemberJoined("nope", "alice"))


def test_membership_invitations_bans_and_roles(log: Log) -> None:
    log.append(
        ev.MemberRoleChanged(C, "alice", MODERATOR, "owner"),
        ev.MemberInvited(C, "carol", "alice"),
        ev.MemberInvited(C, "dave", "alice"),
        ev.InvitationDeclined(C, "dave"),
        ev.MemberBanned(C, "carol", "owner"),  # ends her invitation too
        ev.MemberKicked(C, "alice", "owner"),  # takes her role with her
    )
    channel = log.channels.get(C)
    assert channel.members == {"owner", "bob"}
    assert (channel.invited, channel.banned, channel.roles) == ({}, {"carol"}, {"owner": OWNER})
    log.append(ev.MemberUnbanned(C, "carol", "owner"), ev.MemberInvited(C, "carol", "owner"))
    assert channel.banned == set()
    assert channel.pending_invitation("carol") is not None
    assert channel.pending_invitation("carol").position == log.stream_seq  # type: ignore[union-attr]
    log.append(ev.MemberJoined(C, "carol"), ev.MemberLeft(C, "bob"))
    assert channel.members == {"owner", "carol"}
    assert channel.pending_invitation("carol") is None


def test_posts_are_numbered_recorded_by_send_and_threaded(log: Log) -> None:
    log.post(1, "alice")
    log.post(2, "bob", root=1)
    log.post(3, "alice", root=1)
    channel = log.channels.get(C)
    assert channel.last_seq == 3
    assert channel.messages[1].replies == [2, 3]
    assert channel.earlier_send("alice", "k3") == channel.messages[3].current
    assert channel.messages[3].current.sent_at_unix_ns == 3000
    assert channel.unread_count("owner") == 3


def test_a_post_numbered_like_an_existing_message_is_refused_and_a_copy_changes_nothing(log: Log) -> None:
    log.post(1, "alice")
    log.post(2, "bob")
    log.post(1, "alice")  # the same post again (a copy at another stream position): nothing changes
    channel = log.channels.get(C)
    assert channel.last_seq == 2
    assert channel.messages[1].current.body == "text 1"
    forged = ev.MessagePosted(C, "forged", "alice", 1, "forged words", "kf", 1000, "alice", 0)
    with pytest.raises(FailedPrecondition, match="claims number 1, taken already"):
        log.append(forged)  # the replay halts on it rather than overwrite message #1
    assert channel.messages[1].current.body == "text 1"
    assert channel.messages[1].versions == ["text 1"]


def test_edits_keep_versions_and_a_redaction_removes_every_text(log: Log) -> None:
    log.post(1)
    log.append(ev.MessageEdited(C, "m1", 1, "second", "alice", 5), ev.MessageEdited(C, "m1", 1, "third", "alice", 6))
    record = log.channels.get(C).messages[1]
    assert (record.current.body, record.current.edit_count) == ("third", 2)
    assert record.versions == ["text 1", "second", "third"]
    log.append(ev.MessageRedacted(C, "m1", 1, "owner"))
    assert (record.current.body, record.current.redacted, record.versions) == ("", True, [])


def test_reactions_count_per_user_and_keep_numbers_of_posts_gone(log: Log) -> None:
    log.post(1)
    log.append(
        ev.ReactionAdded(C, 1, "bob", "👍"),
        ev.ReactionAdded(C, 1, "owner", "👍"),
        ev.ReactionAdded(C, 1, "bob", "🎉"),
        ev.ReactionRemoved(C, 1, "bob", "🎉"),
    )
    channel = log.channels.get(C)
    assert channel.messages[1].reactions == {"👍": {"bob", "owner"}}
    # Reactions and edits of posts deleted from the stream: no message, but their numbers stay taken.
    log.append(ev.ReactionAdded(C, 4, "bob", "👍"), ev.MessageEdited(C, "m6", 6, "x", "alice", 1))
    assert sorted(channel.messages) == [1]
    assert channel.last_seq == 6


def test_read_markers_only_move_forward(log: Log) -> None:
    for seq in (1, 2, 3):
        log.post(seq, "bob")
    log.append(ev.ReadMarkerMoved(C, "alice", 2), ev.ReadMarkerMoved(C, "alice", 1))
    channel = log.channels.get(C)
    assert (channel.read_seq("alice"), channel.unread_count("alice")) == (2, 1)


def test_a_join_hides_earlier_history_where_the_channel_says_so() -> None:
    log = Log()
    log.append(ev.ChannelCreated(C, "quiet", "owner", hide_history_before_join=True))
    log.post(1, "owner")
    log.post(2, "owner")
    log.append(ev.MemberJoined(C, "alice"))
    view = log.channels.get(C).view("alice")
    assert (view.shows(2), view.shows(3), view.first_seq) == (False, True, 3)


def test_retention_rename_and_topic(log: Log) -> None:
    log.append(ev.ChannelRetentionSet(C, 30, "platform"), ev.ChannelRenamed(C, "lobby", "owner"))
    log.append(ev.ChannelTopicChanged(C, "weather", "owner"))
    channel = log.channels.get(C)
    assert (channel.retention_days, channel.name, channel.topic) == (30, "lobby", "weather")


def test_erasure_and_expiry_leave_holes_that_keep_their_numbers(log: Log) -> None:
    log.post(1, "bob")
    log.post(2, "alice", root=1)
    log.post(3, "alice")
    log.append(ev.MessagesErased(C, "alice", (2, 3)))
    channel = log.channels.get(C)
    erasure_id = next(iter(channel.markers))
    assert (sorted(channel.messages), channel.messages[1].replies, channel.last_seq) == ([1], [], 3)
    assert channel.earlier_send("alice", "k3") is None
    log.append(ev.MessagesExpired(C, (1,), 30))
    assert channel.messages == {}
    assert len(channel.markers) == 2
    assert erasure_id in channel.markers
    log.post(4)  # the next number, never a second #3
    assert (channel.last_seq, sorted(channel.messages)) == (4, [4])


def test_a_redaction_of_a_post_deleted_from_the_stream_leaves_a_placeholder(log: Log) -> None:
    log.append(ev.MessageRedacted(C, "m5", 5, "owner"), skip=2)
    placeholder = log.channels.get(C).messages[5].current
    assert (placeholder.redacted, placeholder.message_id, log.channels.get(C).last_seq) == (True, "m5", 5)


def test_position_and_version_come_from_the_log_even_for_an_event_this_release_cannot_read(log: Log) -> None:
    log.post(1)
    channel = log.channels.get(C)
    log.append(ev.MemberLeft(C, "bob"), skip=3)  # three events deleted before it (an erasure)
    assert (channel.version, channel.last_stream_seq) == (8, 8)
    newer = EventEnvelope(event_type="parley.messaging.v1.FromTheFuture", aggregate_id=C, aggregate_version=9)
    log.channels.apply_received(ReceivedEvent(newer, channel_subject(C), "MSG", 12, 1, {}))
    assert (channel.version, channel.last_stream_seq, channel.members) == (9, 12, {"owner", "alice"})


def test_events_lost_from_the_logs_tail_leave_their_numbers_version_and_markers_taken(log: Log) -> None:
    log.post(1)
    log.post(2, "bob")
    channel = log.channels.get(C)
    guard = channel.last_stream_seq
    channel.keep_taken(ev.ReactionAdded(C, 4, "bob", "👍"), Recorded(0, 9, "lost-1"))
    channel.keep_taken(ev.MessageRedacted(C, "m5", 5, "owner"), Recorded(0, 10, "lost-2"))
    channel.keep_taken(ev.MessagesErased(C, "alice", (1,)), Recorded(0, 11, "lost-3"))
    channel.keep_taken(None, Recorded(0, 12, "lost-4"))  # a type this release cannot read
    assert (channel.last_seq, channel.version, channel.last_stream_seq) == (5, 12, guard)
    assert (sorted(channel.messages), channel.messages[5].current.redacted, channel.markers) == (
        [2, 5],
        True,
        {"lost-3"},
    )
