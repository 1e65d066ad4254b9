"""What counts as an emoji, and the caps on one message's reactions, without I/O."""

import pytest

from parley_core.errors import InvalidArgument, ResourceExhausted
from parley_messaging.reactions import ReactionLimits, reaction_emoji
from parley_messaging.settings import MessagingSettings


@pytest.mark.parametrize(
    "emoji",
    [
        "👍",
        "👍🏽",  # with a skin tone
        "🇫🇷",  # a flag: two regional indicators
        "🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f",  # England: tag sequence
        "1️⃣",  # keycap
        "👨\u200d👩\u200d👧\u200d👦",  # ZWJ sequence
        "❤️",
    ],
)
def test_one_emoji_of_unicodes_list_is_a_reaction(emoji: str) -> None:
    assert reaction_emoji(emoji) == emoji


def test_a_variant_is_stored_in_its_fully_qualified_form() -> None:
    assert reaction_emoji("❤") == "❤️"
    assert reaction_emoji("©") == "©️"


@pytest.mark.parametrize(
    ("shortcode", "emoji"),
    [(":thumbs_up:", "👍"), (":+1:", "👍"), (":tada:", "🎉"), (":heart:", "❤️"), (":red_heart:", "❤️")],
)
def test_a_known_shortcode_is_its_emoji(shortcode: str, emoji: str) -> None:
    assert reaction_emoji(shortcode) == emoji


@pytest.mark.parametrize(
    "text",
    ["notanemoji", ":notanemoji:", ":thumbs_up::thumbs_up:", "::", ":thumbs up:", "thumbs_up", ":skin-tone-2:"],
)
def test_unknown_shortcodes_and_words_are_refused_saying_what_is_accepted(text: str) -> None:
    with pytest.raises(InvalidArgument, match=r"one emoji from Unicode's emoji list.*or its :shortcode:"):
        reaction_emoji(text)


@pytest.mark.parametrize(
    "text",
    ["", "+1", "1", "👍👍", "👍 ", "🏻", "a" * 10_000, "\u202e", "👍\u0000", "\u200d", "\ufe0f", "🇫"],
)
def test_text_several_emoji_and_lone_components_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument, match="one emoji from Unicode's emoji list"):
        reaction_emoji(text)


def test_a_message_has_at_most_so_many_different_emoji() -> None:
    limits = ReactionLimits(emoji_per_message=2, per_user_per_message=5)
    reactions = {"👍": {"alice"}, "🎉": {"bob"}}
    limits.check_add(reactions, "👍", "carol", 7)  # an emoji already there: one more person
    with pytest.raises(ResourceExhausted, match="#7 already has 2 different emoji"):
        limits.check_add(reactions, "👀", "carol", 7)


def test_a_person_adds_at_most_so_many_emoji_to_one_message() -> None:
    limits = ReactionLimits(emoji_per_message=10, per_user_per_message=2)
    reactions = {"👍": {"alice"}, "🎉": {"alice", "bob"}, "👀": {"bob"}}
    limits.check_add({"👍": {"alice"}}, "👀", "alice", 1)
    limits.check_add(reactions, "👀", "carol", 3)
    with pytest.raises(ResourceExhausted, match="you reacted to message #3 with 2 emoji"):
        limits.check_add(reactions, "✅", "alice", 3)


def test_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_MESSAGING_MAX_EMOJI_PER_MESSAGE", "3")
    monkeypatch.setenv("PARLEY_MESSAGING_MAX_REACTIONS_PER_USER", "1")
    assert MessagingSettings().reaction_limits == ReactionLimits(3, 1)
