"""`parley react` says what it did to which message, and how many have reacted so."""

from __future__ import annotations

from parley.messaging.v1 import messaging_pb2

from parley_cli.messages import reacted_line


def message(**counts: int) -> messaging_pb2.ChatMessage:
    reactions = [messaging_pb2.ReactionCount(emoji=e, user_ids=[f"u{n}" for n in range(c)]) for e, c in counts.items()]
    return messaging_pb2.ChatMessage(channel_seq=12, reactions=reactions)


def test_a_reaction_is_named_with_its_message_and_count() -> None:
    assert reacted_line(message(**{"🎉": 1}), "🎉", removed=False) == "reacted 🎉 to #12 (1 so far)"
    both = message(**{"👍": 2, "🎉": 3})
    assert reacted_line(both, "🎉", removed=False) == "reacted 🎉 to #12 (3 so far); reactions now: 👍x2 🎉x3"


def test_a_shortcode_and_a_removal_show_the_reactions_as_they_are() -> None:
    assert reacted_line(message(**{"👍": 1}), ":thumbs_up:", removed=False) == (
        "reacted :thumbs_up: to #12; reactions now: 👍x1"
    )
    assert reacted_line(message(), "🎉", removed=True) == "removed your 🎉 from #12; reactions now: no reactions"
