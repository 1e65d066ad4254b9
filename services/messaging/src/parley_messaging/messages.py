"""A channel's messages as the projection holds them: the message as it is now, and its record
(earlier texts, thread replies, reactions). No I/O."""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class PostedMessage:
    channel_id: str
    message_id: str
    sender_id: str
    sender_name: str
    channel_seq: int
    body: str
    sent_at_unix_ns: int
    redacted: bool = False
    edit_count: int = 0
    thread_root_seq: int = 0


@dataclass
class MessageRecord:
    """A message as it is now, plus every earlier text (kept for moderators until redaction or expiry)."""

    current: PostedMessage
    versions: list[str] = field(default_factory=list)
    replies: list[int] = field(default_factory=list)  # channel_seq of each reply in this thread
    reactions: dict[str, set[str]] = field(default_factory=dict)  # emoji -> users

    def react(self, emoji: str, user_id: str, *, remove: bool) -> None:
        users = self.reactions.setdefault(emoji, set())
        if remove:
            users.discard(user_id)
            if not users:
                del self.reactions[emoji]
        else:
            users.add(user_id)

    def edited(self, body: str) -> None:
        self.versions.append(body)
        self.current = replace(self.current, body=body, edit_count=self.current.edit_count + 1)

    def redacted(self) -> None:
        # Redaction removes every text this projection holds, not only the visible one.
        self.versions.clear()
        self.current = replace(self.current, body="", redacted=True)
