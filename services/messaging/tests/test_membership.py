"""Channel roles and membership rules, without I/O."""

import pytest

from parley_core.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from parley_core.visibility import EVERYTHING
from parley_messaging.channel_state import MODERATOR, OWNER
from parley_messaging.inputs import validate_direct_members
from parley_messaging.messages import PostedMessage
from parley_messaging.projection import ChannelDirectory


def test_private_channel_is_joined_by_invitation_from_a_moderator() -> None:
    channel = ChannelDirectory().create("c1", "secret", "owner", 1, private=True)
    assert channel.role("owner") == OWNER
    with pytest.raises(PermissionDenied, match="invite"):
        channel.check_join("bob")
    channel.add_member("mallory", 2)
    with pytest.raises(PermissionDenied, match="only a moderator may invite"):
        channel.check_invite("mallory", "bob")
    channel.check_invite("owner", "bob")
    channel.invite("bob", "owner")
    channel.check_join("bob")


def test_moderators_remove_members_and_only_the_owner_removes_moderators() -> None:
    channel = ChannelDirectory().create("c1", "general", "owner", 1)
    for user in ("mod", "mod2", "alice", "bob"):
        channel.add_member(user, 2)
    channel.check_set_role("owner", "mod", MODERATOR)
    channel.roles["mod"] = channel.roles["mod2"] = MODERATOR
    with pytest.raises(PermissionDenied):
        channel.check_set_role("mod", "alice", MODERATOR)  # only the owner grants roles
    channel.check_remove("mod", "alice")
    with pytest.raises(PermissionDenied):
        channel.check_remove("mod", "mod2")
    with pytest.raises(PermissionDenied):
        channel.check_remove("mod", "owner")
    channel.check_remove("owner", "mod2")
    with pytest.raises(PermissionDenied):
        channel.check_remove("alice", "bob")
    with pytest.raises(InvalidArgument):
        channel.check_set_role("owner", "alice", "admin")


def test_a_banned_user_stays_out_until_unbanned() -> None:
    channel = ChannelDirectory().create("c1", "general", "owner", 1)
    channel.add_member("troll", 2)
    channel.remove_member("troll")
    channel.banned.add("troll")
    with pytest.raises(PermissionDenied, match="banned"):
        channel.check_join("troll")
    with pytest.raises(FailedPrecondition, match="unban"):
        channel.check_invite("owner", "troll")
    channel.banned.discard("troll")
    channel.check_join("troll")


def test_direct_conversations_have_fixed_members_and_no_moderator() -> None:
    others = validate_direct_members("alice", ["bob", "carol", "bob", "alice"])
    assert others == ("bob", "carol")
    channel = ChannelDirectory().create("d1", "direct", "alice", 1, direct=True, others=others)
    assert channel.members == {"alice", "bob", "carol"}
    assert not channel.is_moderator("alice")
    with pytest.raises(PermissionDenied):
        channel.check_join("dave")
    with pytest.raises(FailedPrecondition):
        channel.check_invite("alice", "dave")
    channel.check_update("bob")  # anyone in a direct conversation may set its topic
    with pytest.raises(InvalidArgument):
        validate_direct_members("alice", ["alice"])


def test_hidden_history_starts_after_the_join() -> None:
    channel = ChannelDirectory().create("c1", "general", "owner", 1, hide_history_before_join=True)
    channel.last_seq = 41
    channel.add_member("late", 90)
    assert channel.view("late").first_seq == 42
    assert channel.view("owner").first_seq == 1
    # Live streams and resumes hide every event before the join, membership changes included.
    assert channel.view("late").first_position == 90
    assert channel.view("owner").first_position == 1


def test_every_command_about_a_hidden_message_is_refused_alike() -> None:
    """A newcomer of a hide-history channel learns nothing of an earlier message through any
    command: not its text, not whether they sent it, not whether it is a reply."""
    channel = ChannelDirectory().create("c1", "general", "owner", 1, hide_history_before_join=True)
    channel.add_member("late")
    channel.record_post(PostedMessage("c1", "m1", "late", "late", 1, "said before leaving", 0), "k1")
    channel.remove_member("late")
    channel.record_post(PostedMessage("c1", "m2", "owner", "owner", 2, "before the join", 0), "k2")
    channel.add_member("late")  # rejoined: history starts after #2 again
    channel.roles["late"] = MODERATOR  # so a role never is the reason for a refusal below
    channel.record_post(PostedMessage("c1", "m3", "owner", "owner", 3, "after the join", 0), "k3")
    hidden = "sent before you joined"
    for seq in (1, 2):
        for check in (channel.check_edit, channel.check_redact, channel.readable, channel.check_thread_root):
            with pytest.raises(PermissionDenied, match=hidden):
                check("late", seq)
    assert channel.readable("late", 3).current.body == "after the join"
    channel.check_thread_root("late", 3)
    assert channel.check_redact("late", 3).current.channel_seq == 3
    assert channel.check_edit("owner", 2).current.body == "before the join"  # the owner was there
    with pytest.raises(FailedPrecondition, match="idempotency key was used before you joined"):
        channel.earlier_send("late", "k1")  # a "retry" of the old send would hand back its text
    assert channel.earlier_send("owner", "k2") is not None


def test_a_channel_that_shows_its_history_shows_it_from_the_start() -> None:
    channel = ChannelDirectory().create("c1", "general", "owner", 1)
    channel.last_seq = 41
    channel.add_member("late", 90)
    assert channel.view("late") == EVERYTHING
