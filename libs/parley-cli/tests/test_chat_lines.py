"""How the CLI writes messages and live events: names for people, edits, reactions, threads."""

from __future__ import annotations

from parley.gateway.v1 import gateway_pb2
from parley.messaging.v1 import messaging_pb2

from parley_cli.chat import channel_label, event_people, format_event, format_message
from parley_client import LiveEvent

ALICE, BOB = "a1" * 16, "b2" * 16
NAMES = {ALICE: "alice", BOB: "bob"}


def test_a_message_shows_its_edit_thread_replies_and_who_reacted() -> None:
    message = messaging_pb2.ChatMessage(
        channel_seq=7,
        sender_id=ALICE,
        sender_name="alice",
        body="final",
        edited=True,
        thread_root_seq=3,
        reply_count=2,
        reactions=[messaging_pb2.ReactionCount(emoji="👍", user_ids=[ALICE, BOB])],
    )
    line = format_message(message, NAMES)
    assert line.endswith("alice: (in the thread of #3) final (edited) (2 replies)  👍 alice, bob")


def test_a_redacted_message_names_its_author_and_an_erased_one_does_not() -> None:
    redacted = messaging_pb2.ChatMessage(channel_seq=1, sender_id=BOB, redacted=True)
    assert format_message(redacted, NAMES).endswith("bob: (redacted)")
    erased = messaging_pb2.ChatMessage(channel_seq=2, sender_id=BOB, erased=True)
    assert format_message(erased, NAMES).endswith(f"{BOB[:8]}: (erased with its author's data)")


def test_live_reactions_and_membership_changes_name_people() -> None:
    reaction = LiveEvent(
        "reaction", gateway_pb2.ClientEvent(reaction=gateway_pb2.Reaction(channel_seq=4, user_id=BOB, emoji="🎉"))
    )
    assert event_people(reaction) == [BOB]
    assert format_event(reaction, NAMES).endswith("bob reacted 🎉")
    joined = LiveEvent(
        "membership", gateway_pb2.ClientEvent(membership=gateway_pb2.MembershipChange(user_id=ALICE, change="joined"))
    )
    assert format_event(joined, NAMES) == "-- alice joined --"
    assert format_event(joined, {}) == f"-- {ALICE[:8]} joined --"  # unknown: the id's start


def test_a_live_redaction_names_the_author_shown_before_and_an_invitation_the_inviter() -> None:
    redaction = gateway_pb2.ClientEvent(updated=messaging_pb2.ChatMessage(channel_seq=5, redacted=True))
    assert format_event(LiveEvent("updated", redaction), NAMES, {5: "bob"}) == "[    5] (bob's message redacted)"
    assert format_event(LiveEvent("updated", redaction), NAMES, {}) == "[    5] (message redacted)"  # not shown here
    change = gateway_pb2.MembershipChange(user_id=BOB, actor_id=ALICE, change="invited")
    invited = LiveEvent("membership", gateway_pb2.ClientEvent(membership=change))
    assert event_people(invited) == [BOB, ALICE]
    assert format_event(invited, NAMES) == "-- alice invited bob --"


def test_a_direct_conversation_is_named_by_the_other_members() -> None:
    direct = messaging_pb2.Channel(name="direct", direct=True, member_ids=[ALICE, BOB])
    assert channel_label(direct, NAMES, me=ALICE) == "direct with bob"
    assert channel_label(messaging_pb2.Channel(name="ops"), NAMES, me=ALICE) == "#ops"


def test_counts_take_the_noun_in_their_number() -> None:
    from parley_cli.wording import counted

    assert counted(1, "member") == "1 member"
    assert counted(2, "edit") == "2 edits"
    assert counted(0, "reply", "replies") == "0 replies"


def test_the_older_messages_hint_repeats_the_data_folder_and_user_it_was_run_with() -> None:
    import argparse
    from pathlib import Path

    from parley_cli.chat import older_hint
    from parley_cli.invocation import parley_as_run

    named = argparse.Namespace(data_dir=Path("/srv/my parley"), data_dir_given=True, user="bob")
    assert older_hint(parley_as_run(named), "general", 28) == (
        "-- older messages: parley --data-dir '/srv/my parley' --as bob older general 28 --"
    )
    found = argparse.Namespace(data_dir=Path(".parley"), data_dir_given=False, user="bob")
    assert older_hint(parley_as_run(found), "general", 28) == "-- older messages: parley --as bob older general 28 --"
