"""Who may read which messages of a channel: the hide-history-before-join rule, in one place.

A channel created with `hide_history_before_join` shows each member only the messages sent
after their latest join. Every path that returns message content goes through `HistoryView`:
messaging's views and commands (threads, reactions, edits, versions, redactions, replies),
storage's history, the gateway's history and its live stream. Each service supplies the two
facts from its own projection (does the channel hide history; what was its newest message number
when the member last joined); the rule itself is here, so the services cannot disagree on it.

Message numbers are dense (a post takes the channel's newest number plus one), so the newest
number at a join is also the count of messages posted before it. A live stream or a resumed one
reads the channel's events rather than its messages; for those the view also holds the join's
position in the event log, before which the member sees no event at all (no membership change,
rename or kick reason either).
"""

from __future__ import annotations

from dataclasses import dataclass

from parley_core.errors import PermissionDenied

__all__ = ["EVERYTHING", "HistoryView"]


@dataclass(frozen=True)
class HistoryView:
    """What one member may read of one channel: the messages numbered `first_seq` and later, and
    the channel's events from log position `first_position` on."""

    first_seq: int = 1
    first_position: int = 0

    @classmethod
    def at_join(cls, *, hides_history: bool, newest_seq_at_join: int, joined_at: int = 0) -> HistoryView:
        """A member who (last) joined, by the event at log position `joined_at`, when the channel's
        newest message was `newest_seq_at_join`."""
        if not hides_history:
            return EVERYTHING
        return cls(newest_seq_at_join + 1, joined_at)

    def shows(self, channel_seq: int) -> bool:
        return channel_seq >= self.first_seq

    def shows_event(self, position: int, about_seq: int) -> bool:
        """An event at log `position` about message `about_seq` (0: about no message, such as a
        membership change): nothing from before the join, nothing since about an earlier message
        (an edit, a redaction, a reaction, a read marker)."""
        return position >= self.first_position and (about_seq == 0 or self.shows(about_seq))

    def require(self, channel_seq: int) -> None:
        """Refuse any use of a message this member may not read: its text, its sender, its reactions,
        its versions and the right to change it all stay out of reach, with one answer for all."""
        if not self.shows(channel_seq):
            raise PermissionDenied(
                f"message #{channel_seq} was sent before you joined, and this channel hides earlier history"
            )

    def page_after(self, *, after_seq: int, before_seq: int = 0) -> int | None:
        """The `after_seq` a history page may use, or None when the whole page is hidden (every
        message before `before_seq` was sent before this member joined)."""
        if before_seq and before_seq <= self.first_seq:
            return None
        return max(after_seq, self.first_seq - 1)


EVERYTHING = HistoryView()
