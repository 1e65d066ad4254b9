"""Settings only the messaging service reads (PARLEY_MESSAGING_*), beside parley_core's shared ones."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from parley_messaging.reactions import ReactionLimits


class MessagingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PARLEY_MESSAGING_", extra="ignore")

    # Distinct emoji on one message, and emoji one person may add to one message.
    max_emoji_per_message: int = Field(default=ReactionLimits.emoji_per_message, ge=1, le=1000)
    max_reactions_per_user: int = Field(default=ReactionLimits.per_user_per_message, ge=1, le=1000)
    # Edits of one message: every earlier text is kept for its moderators, and all of them must
    # fit one ListMessageVersions answer (4 MiB; a body is up to 4000 characters, 16 KB in UTF-8).
    # Without a cap a sender could bury the first text under enough edits that no moderator sees it.
    max_edits_per_message: int = Field(default=100, ge=1, le=200)

    @property
    def reaction_limits(self) -> ReactionLimits:
        return ReactionLimits(self.max_emoji_per_message, self.max_reactions_per_user)
