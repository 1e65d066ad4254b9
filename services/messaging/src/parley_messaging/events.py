"""Messaging's channel events as the domain sees them: frozen, past tense, no protobuf.

Each mirrors its protobuf message on the MSG stream field for field (same names; a time is
unix nanoseconds), so codec.py converts every one with one pair of functions. They are what
`decisions` returns and what `Channel.apply` folds.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ChannelEvent:
    channel_id: str


@dataclass(frozen=True, slots=True)
class ChannelCreated(ChannelEvent):
    name: str
    creator_id: str
    encrypted: bool = False
    private: bool = False
    direct: bool = False
    member_ids: tuple[str, ...] = ()  # members besides the creator from the start (direct conversations)
    hide_history_before_join: bool = False


@dataclass(frozen=True, slots=True)
class MemberJoined(ChannelEvent):
    user_id: str


@dataclass(frozen=True, slots=True)
class MemberLeft(ChannelEvent):
    user_id: str


@dataclass(frozen=True, slots=True)
class MemberInvited(ChannelEvent):
    user_id: str
    invited_by: str


@dataclass(frozen=True, slots=True)
class InvitationDeclined(ChannelEvent):
    user_id: str


@dataclass(frozen=True, slots=True)
class MemberKicked(ChannelEvent):
    user_id: str
    kicked_by: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class MemberBanned(ChannelEvent):
    user_id: str
    banned_by: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class MemberUnbanned(ChannelEvent):
    user_id: str
    unbanned_by: str


@dataclass(frozen=True, slots=True)
class MemberRoleChanged(ChannelEvent):
    user_id: str
    role: str  # "moderator" or "member"
    changed_by: str


@dataclass(frozen=True, slots=True)
class ChannelRenamed(ChannelEvent):
    name: str
    renamed_by: str


@dataclass(frozen=True, slots=True)
class ChannelTopicChanged(ChannelEvent):
    topic: str
    changed_by: str


@dataclass(frozen=True, slots=True)
class ChannelRetentionSet(ChannelEvent):
    days: int
    set_by: str


@dataclass(frozen=True, slots=True)
class MessagePosted(ChannelEvent):
    message_id: str
    sender_id: str
    channel_seq: int
    body: str
    idempotency_key: str
    sent_at: int  # unix ns
    sender_name: str = ""
    thread_root_seq: int = 0


@dataclass(frozen=True, slots=True)
class MessageEdited(ChannelEvent):
    message_id: str
    channel_seq: int
    body: str
    editor_id: str
    edited_at: int  # unix ns
    editor_name: str = ""


@dataclass(frozen=True, slots=True)
class MessageRedacted(ChannelEvent):
    message_id: str
    channel_seq: int
    redactor_id: str
    reason: str = ""
    redacted_at: int = 0  # unix ns


@dataclass(frozen=True, slots=True)
class ReactionAdded(ChannelEvent):
    channel_seq: int
    user_id: str
    emoji: str


@dataclass(frozen=True, slots=True)
class ReactionRemoved(ChannelEvent):
    channel_seq: int
    user_id: str
    emoji: str


@dataclass(frozen=True, slots=True)
class ReadMarkerMoved(ChannelEvent):
    user_id: str
    channel_seq: int


@dataclass(frozen=True, slots=True)
class MessagesErased(ChannelEvent):
    user_id: str  # the erased author
    channel_seqs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class MessagesExpired(ChannelEvent):
    channel_seqs: tuple[int, ...]
    retention_days: int = 0
