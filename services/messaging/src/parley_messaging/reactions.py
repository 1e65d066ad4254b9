"""Reactions without I/O: what counts as an emoji, and how many one message and one person may add.

An emoji is one entry of Unicode's emoji list (emoji-test.txt, as the pinned `emoji` package
ships it): a single code point (👍), or a sequence the list names as one emoji: with a skin tone
(👍🏽), a flag (🇫🇷, 🏴󠁧󠁢󠁥󠁮󠁧󠁿), a keycap (1️⃣) or a ZWJ sequence (👨‍👩‍👧). Text ("+1"), several emoji ("👍👍") and
components on their own (a skin tone swatch) are not. A variant without its emoji presentation
selector (❤ for ❤️) is stored in its fully-qualified form, so both count as one reaction.
A `:shortcode:` the `emoji` package knows (its CLDR names and their common aliases, as chat
apps write them: `:thumbs_up:`, `:+1:`, `:tada:`) stands for its emoji and is stored as it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Set
from dataclasses import dataclass

from emoji import EMOJI_DATA, STATUS, emojize

from parley_core.errors import InvalidArgument, ResourceExhausted

# The longest entry of the list has 10 code points; anything much longer is refused unread.
MAX_EMOJI_CHARS = 32
_COMPONENT = STATUS["component"]
_FULLY_QUALIFIED: dict[str, str] = {
    str(data["en"]): text for text, data in EMOJI_DATA.items() if data["status"] == STATUS["fully_qualified"]
}


_SHORTCODE = re.compile(r":[\w+\-]{1,60}:")
WHAT_A_REACTION_IS = (
    "a reaction is one emoji from Unicode's emoji list, such as 👍, 👍🏽 or 🇫🇷, or its :shortcode: "
    "such as :thumbs_up:, :+1: or :tada:; not text, and not several emoji"
)


def reaction_emoji(text: str) -> str:
    """The emoji a reaction is, in its fully-qualified form; InvalidArgument for anything else."""
    if _SHORTCODE.fullmatch(text):
        text = emojize(text, language="alias")  # unchanged when the name is unknown: refused below
    data = EMOJI_DATA.get(text) if len(text) <= MAX_EMOJI_CHARS else None
    if data is None or data["status"] == _COMPONENT:
        raise InvalidArgument(WHAT_A_REACTION_IS)
    return _FULLY_QUALIFIED.get(str(data["en"]), text)


@dataclass(frozen=True)
class ReactionLimits:
    """Caps that keep one message's reactions (and so a history page) small whoever piles on."""

    emoji_per_message: int = 20  # distinct emoji on one message
    per_user_per_message: int = 10  # emoji one person adds to one message

    def check_add(self, reactions: Mapping[str, Set[str]], emoji: str, user_id: str, channel_seq: int) -> None:
        if emoji not in reactions and len(reactions) >= self.emoji_per_message:
            raise ResourceExhausted(
                f"message #{channel_seq} already has {self.emoji_per_message} different emoji, the most one message "
                "may have; react with one of those instead"
            )
        mine = sum(1 for users in reactions.values() if user_id in users)
        if mine >= self.per_user_per_message:
            raise ResourceExhausted(
                f"you reacted to message #{channel_seq} with {mine} emoji, the most one person may add to one "
                "message; remove one first"
            )
