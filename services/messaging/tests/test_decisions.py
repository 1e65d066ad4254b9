"""The commands' decisions without servers: a channel built from events, a command, and the
events decided (or the domain error raised). Each retried command decides nothing."""

from __future__ import annotations

import pytest

from parley_core.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, ResourceExhausted
from parley_core.event_log import Position
from parley_messaging import codec
from parley_messaging import decisions as cmd
from parley_messaging import events as ev
from parley_messaging.channel_state import MODERATOR
from parley_messaging.devices import E2EE_BODY_PREFIX
from parley_messaging.domain import Channel
from parley_messaging.posts_ahead import after_post
from parley_messaging.reactions import ReactionLimits

C = "c1"


def channel(*later: ev.ChannelEvent, private: bool = False, encrypted: bool = False) -> Channel:
    """`general`, owned by `owner`, with alice and bob in it, then `later`."""
    made = Channel.created(ev.ChannelCreated(C, "general", "owner", encrypted=encrypted, private=private))
    for event in (ev.MemberJoined(C, "alice"), ev.MemberJoined(C, "bob"), *later):
        made.apply(event)
    return made


def decided(state: Channel, command: object) -> tuple[ev.ChannelEvent, ...]:
    """The events decided, applied to `state` as the log would (a retry then decides on it)."""
    events, _ = cmd.decide(state, command)
    for event in events:
        state.apply(event)
    return events


def post(text: str = "hi", key: str = "k1", sender: str = "alice", root: int = 0) -> cmd.PostMessage:
    return cmd.PostMessage(sender, sender, text, key, f"id-{key}", 42, root)


def test_creation_is_decided_once_per_id() -> None:
    create = cmd.CreateChannel(C, "general", "owner", private=True)
    events, _ = cmd.create(None, create)
    assert events == (ev.ChannelCreated(C, "general", "owner", private=True),)
    assert cmd.create(Channel.created(events[0]), create) == cmd.NOTHING  # a retry finds the first


def test_a_post_is_numbered_after_the_newest_and_a_retry_returns_the_first() -> None:
    state = channel(ev.ReactionAdded(C, 4, "bob", "👍"))  # #4 was taken (its post deleted since)
    [posted] = decided(state, post())
    assert posted == ev.MessagePosted(C, "id-k1", "alice", 5, "hi", "k1", 42, "alice", 0)
    events, earlier = cmd.decide(state, post(text="hi again"))  # the same key: a retry
    assert events == ()
    assert (earlier.channel_seq, earlier.body) == (5, "hi")
    [other] = decided(state, post(key="k2"))
    assert isinstance(other, ev.MessagePosted)
    assert other.channel_seq == 6


def test_a_post_is_refused_to_a_stranger_bad_bodies_and_replies_to_replies() -> None:
    state = channel()
    with pytest.raises(PermissionDenied, match="not a member"):
        cmd.decide(state, post(sender="mallory"))
    with pytest.raises(InvalidArgument, match="empty"):
        cmd.decide(state, post(text="  "))
    with pytest.raises(InvalidArgument, match="end-to-end encrypted"):
        cmd.decide(channel(encrypted=True), post(text="plain text"))
    assert decided(channel(encrypted=True), post(text=E2EE_BODY_PREFIX + "abc"))
    decided(state, post(key="root"))
    decided(state, post(key="reply", root=1))
    with pytest.raises(InvalidArgument, match="itself a reply"):
        cmd.decide(state, post(key="deeper", root=2))
    with pytest.raises(NotFound):
        cmd.decide(state, post(key="lost", root=9))


def test_only_the_sender_edits_up_to_the_limit_and_an_edit_retried_changes_nothing() -> None:
    state = channel()
    decided(state, post())
    edit = cmd.EditMessage("alice", "alice", 1, "better", 7, max_edits=1)
    with pytest.raises(PermissionDenied, match="only the sender"):
        cmd.decide(state, cmd.EditMessage("bob", "bob", 1, "mine now", 7, max_edits=1))
    assert decided(state, edit) == (ev.MessageEdited(C, "id-k1", 1, "better", "alice", 7, "alice"),)
    assert decided(state, edit) == ()
    with pytest.raises(ResourceExhausted, match="edited 1 times"):
        cmd.decide(state, cmd.EditMessage("alice", "alice", 1, "best", 8, max_edits=1))
    with pytest.raises(NotFound):
        cmd.decide(state, cmd.EditMessage("alice", "alice", 2, "x", 8, max_edits=1))


def test_the_sender_or_a_moderator_redacts_once_and_no_edit_follows() -> None:
    state = channel(ev.MemberRoleChanged(C, "bob", MODERATOR, "owner"), ev.MemberJoined(C, "carol"))
    decided(state, post())
    with pytest.raises(PermissionDenied, match="sender or a moderator"):
        cmd.decide(state, cmd.RedactMessage("carol", 1, 9))
    assert decided(state, cmd.RedactMessage("bob", 1, 9, "spam")) == (
        ev.MessageRedacted(C, "id-k1", 1, "bob", "spam", 9),
    )
    assert decided(state, cmd.RedactMessage("alice", 1, 10)) == ()
    with pytest.raises(FailedPrecondition, match="redacted"):
        cmd.decide(state, cmd.EditMessage("alice", "alice", 1, "back", 11, max_edits=5))


def test_reactions_are_emoji_within_limits_and_idempotent() -> None:
    state = channel()
    decided(state, post())
    limits = ReactionLimits(emoji_per_message=2, per_user_per_message=5)

    def react(emoji: str, user: str = "bob", remove: bool = False) -> tuple[ev.ChannelEvent, ...]:
        return decided(state, cmd.React(user, 1, emoji, remove, limits))

    assert react(":thumbs_up:") == (ev.ReactionAdded(C, 1, "bob", "👍"),)  # stored as the emoji
    assert react("👍") == ()
    with pytest.raises(InvalidArgument, match="one emoji"):
        react("+1")
    react("🎉")
    with pytest.raises(ResourceExhausted, match="2 different emoji"):
        react("🚀")
    assert react("🎉", remove=True) == (ev.ReactionRemoved(C, 1, "bob", "🎉"),)
    assert react("🎉", remove=True) == ()
    with pytest.raises(PermissionDenied):
        react("👍", user="mallory")


def test_read_markers_move_forward_only_and_not_past_the_newest() -> None:
    state = channel()
    decided(state, post())
    decided(state, post(key="k2"))
    assert decided(state, cmd.MarkRead("bob", 2)) == (ev.ReadMarkerMoved(C, "bob", 2),)
    assert decided(state, cmd.MarkRead("bob", 1)) == ()
    with pytest.raises(InvalidArgument, match="newest message is #2"):
        cmd.decide(state, cmd.MarkRead("bob", 3))
    with pytest.raises(PermissionDenied):
        cmd.decide(state, cmd.MarkRead("mallory", 1))


def test_join_and_leave_are_idempotent_and_a_private_channel_needs_an_invitation() -> None:
    state = channel(private=True)
    with pytest.raises(PermissionDenied, match="invite you first"):
        cmd.decide(state, cmd.JoinChannel("carol"))
    with pytest.raises(PermissionDenied, match="only a moderator may invite"):
        cmd.decide(state, cmd.InviteMember("alice", "carol"))
    assert decided(state, cmd.InviteMember("owner", "carol")) == (ev.MemberInvited(C, "carol", "owner"),)
    assert decided(state, cmd.InviteMember("owner", "carol")) == ()  # invited already
    assert decided(state, cmd.JoinChannel("carol")) == (ev.MemberJoined(C, "carol"),)
    assert decided(state, cmd.JoinChannel("carol")) == ()
    assert decided(state, cmd.LeaveChannel("carol")) == (ev.MemberLeft(C, "carol"),)
    assert decided(state, cmd.LeaveChannel("carol")) == ()


def test_an_invitation_is_declined_once() -> None:
    state = channel(ev.MemberInvited(C, "carol", "alice"))
    assert decided(state, cmd.DeclineInvitation("carol")) == (ev.InvitationDeclined(C, "carol"),)
    with pytest.raises(NotFound, match="no pending invitation"):
        cmd.decide(state, cmd.DeclineInvitation("carol"))


def test_kicks_bans_and_unbans_by_moderators_over_members_only() -> None:
    state = channel(ev.MemberRoleChanged(C, "bob", MODERATOR, "owner"))
    with pytest.raises(PermissionDenied, match="only a moderator"):
        cmd.decide(state, cmd.KickMember("alice", "bob"))
    moderators = channel(*(ev.MemberRoleChanged(C, who, MODERATOR, "owner") for who in ("alice", "bob")))
    with pytest.raises(PermissionDenied, match="only the owner may remove a moderator"):
        cmd.decide(moderators, cmd.BanMember("bob", "alice"))
    with pytest.raises(InvalidArgument, match="LeaveChannel"):
        cmd.decide(state, cmd.KickMember("bob", "bob"))
    assert decided(state, cmd.KickMember("bob", "alice", "rude")) == (ev.MemberKicked(C, "alice", "bob", "rude"),)
    assert decided(state, cmd.KickMember("bob", "alice")) == ()  # gone already
    assert decided(state, cmd.BanMember("bob", "alice")) == (ev.MemberBanned(C, "alice", "bob", ""),)
    assert decided(state, cmd.BanMember("bob", "alice")) == ()
    with pytest.raises(PermissionDenied, match="banned"):
        cmd.decide(state, cmd.JoinChannel("alice"))
    with pytest.raises(FailedPrecondition, match="unban them first"):
        cmd.decide(state, cmd.InviteMember("bob", "alice"))
    assert decided(state, cmd.UnbanMember("bob", "alice")) == (ev.MemberUnbanned(C, "alice", "bob"),)
    assert decided(state, cmd.UnbanMember("bob", "alice")) == ()


def test_roles_are_the_owners_to_give() -> None:
    state = channel()
    with pytest.raises(PermissionDenied, match="only the channel's owner"):
        cmd.decide(state, cmd.SetMemberRole("alice", "bob", MODERATOR))
    with pytest.raises(InvalidArgument, match="role must be"):
        cmd.decide(state, cmd.SetMemberRole("owner", "bob", "admin"))
    with pytest.raises(FailedPrecondition, match="not a member"):
        cmd.decide(state, cmd.SetMemberRole("owner", "carol", MODERATOR))
    assert decided(state, cmd.SetMemberRole("owner", "bob", MODERATOR)) == (
        ev.MemberRoleChanged(C, "bob", MODERATOR, "owner"),
    )
    assert decided(state, cmd.SetMemberRole("owner", "bob", MODERATOR)) == ()


def test_renames_topics_and_retention_are_recorded_once() -> None:
    state = channel()
    with pytest.raises(PermissionDenied, match="only a moderator may rename"):
        cmd.decide(state, cmd.RenameChannel("alice", "mine"))
    assert decided(state, cmd.RenameChannel("owner", "lobby")) == (ev.ChannelRenamed(C, "lobby", "owner"),)
    assert decided(state, cmd.RenameChannel("owner", "lobby")) == ()
    assert decided(state, cmd.ChangeTopic("owner", "news")) == (ev.ChannelTopicChanged(C, "news", "owner"),)
    assert decided(state, cmd.SetRetention("platform", 30)) == (ev.ChannelRetentionSet(C, 30, "platform"),)
    assert decided(state, cmd.SetRetention("platform", 30)) == ()
    assert (state.name, state.topic, state.retention_days) == ("lobby", "news", 30)


def test_every_command_has_one_decision() -> None:
    commands = {cls for cls in vars(cmd).values() if isinstance(cls, type) and cls.__module__ == cmd.__name__}
    assert set(cmd.DECIDE) == commands - {cmd.CreateChannel}


def test_posts_decided_ahead_of_their_acknowledgement_leave_the_projection_as_it_was() -> None:
    """A pipelined round (posts_ahead): each post decided on the channel as the posts before it
    will leave it, numbered and deduplicated as if they had landed, while the projection's
    channel (what the replay and the acknowledgements change) stays as the log holds it."""
    state = channel()
    ahead: Channel | None = state
    decided_ahead = []
    for command in (post(key="k1"), post(key="k2"), post(text="again", key="k1")):
        assert ahead is not None
        events, earlier = cmd.decide(ahead, command)
        decided_ahead.append((events, earlier))
        if events:
            version = ahead.version + 1
            ahead = after_post(ahead, codec.new_event(events[0], "alice"), Position(version, 100 + version))

    [(first, _), (second, _), (retry, earlier)] = decided_ahead
    assert [e.channel_seq for e in (*first, *second) if isinstance(e, ev.MessagePosted)] == [1, 2]
    assert retry == ()
    assert earlier is not None
    assert earlier.channel_seq == 1  # the retry finds the first, though it is still on its way
    assert (state.last_seq, state.messages, state.sends, state.version) == (0, {}, {}, channel().version)
    assert ahead is not None
    reply = cmd.PostMessage("alice", "alice", "re", "k3", "id-k3", 42, 1)
    [replied] = cmd.decide(ahead, reply)[0]
    assert after_post(ahead, codec.new_event(replied, "alice"), Position(9, 109)) is None  # a reply: one at a time
