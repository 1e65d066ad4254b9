"""Channels: membership, the per-channel message order and idempotent sends, without I/O."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace

from parley_core.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied

MAX_CHANNEL_NAME = 64
MAX_BODY_CHARS = 4000
MAX_IDEMPOTENCY_KEY = 128
IDEMPOTENCY_NAMESPACE = uuid.UUID("5b0c8f5e-7f0a-4a53-9a0e-6c1f2f1d9e11")


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


@dataclass
class MessageRecord:
    """A message as it is now, plus every earlier text (kept for moderators until redaction)."""

    current: PostedMessage
    versions: list[str] = field(default_factory=list)

    def edited(self, body: str) -> None:
        self.versions.append(body)
        self.current = replace(self.current, body=body, edit_count=self.current.edit_count + 1)

    def redacted(self) -> None:
        # Redaction removes every text this projection holds, not only the visible one.
        self.versions.clear()
        self.current = replace(self.current, body="", redacted=True)


@dataclass
class Channel:
    channel_id: str
    name: str
    members: set[str] = field(default_factory=set)
    last_seq: int = 0  # channel sequence of the newest message
    last_stream_seq: int = 0  # stream sequence of the newest event: the append guard
    version: int = 1  # events applied to this aggregate
    sends: dict[tuple[str, str], int] = field(default_factory=dict)  # (sender, key) -> channel_seq
    messages: dict[int, MessageRecord] = field(default_factory=dict)
    creator_id: str = ""
    encrypted: bool = False

    def require_member(self, user_id: str) -> None:
        if user_id not in self.members:
            raise PermissionDenied("you are not a member of this channel; join it first")

    def is_moderator(self, user_id: str) -> bool:
        """The channel's creator moderates it (its owner role)."""
        return user_id == self.creator_id

    def earlier_send(self, sender_id: str, key: str) -> PostedMessage | None:
        seq = self.sends.get((sender_id, key))
        return None if seq is None else self.messages[seq].current

    def message(self, channel_seq: int) -> MessageRecord:
        record = self.messages.get(channel_seq)
        if record is None:
            raise NotFound(f"no message #{channel_seq} in this channel")
        return record

    def record_post(self, message: PostedMessage, idempotency_key: str) -> None:
        self.last_seq = message.channel_seq
        self.messages[message.channel_seq] = MessageRecord(message, [message.body])
        self.sends[(message.sender_id, idempotency_key)] = message.channel_seq

    def check_edit(self, user_id: str, channel_seq: int) -> MessageRecord:
        self.require_member(user_id)
        record = self.message(channel_seq)
        if record.current.redacted:
            raise FailedPrecondition(f"message #{channel_seq} was redacted; it can no longer be edited")
        if record.current.sender_id != user_id:
            raise PermissionDenied("only the sender may edit a message")
        return record

    def check_redact(self, user_id: str, channel_seq: int) -> MessageRecord:
        self.require_member(user_id)
        record = self.message(channel_seq)
        if record.current.sender_id != user_id and not self.is_moderator(user_id):
            raise PermissionDenied("only the sender or a moderator of the channel may redact a message")
        return record


def validate_channel_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise InvalidArgument("channel name is required")
    if len(name) > MAX_CHANNEL_NAME or any(not ch.isprintable() for ch in name):
        raise InvalidArgument(f"channel name must be at most {MAX_CHANNEL_NAME} printable characters")
    return name


def validate_body(body: str) -> str:
    if not body.strip():
        raise InvalidArgument("message body is empty")
    if len(body) > MAX_BODY_CHARS:
        raise InvalidArgument(f"message body must be at most {MAX_BODY_CHARS} characters")
    return body


def validate_idempotency_key(key: str) -> str:
    if len(key) > MAX_IDEMPOTENCY_KEY:
        raise InvalidArgument(f"idempotency key must be at most {MAX_IDEMPOTENCY_KEY} characters")
    return key or uuid.uuid4().hex


def send_event_id(channel_id: str, sender_id: str, idempotency_key: str) -> str:
    """Same send, same event id: JetStream's Nats-Msg-Id then drops a concurrent retry."""
    return uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{channel_id}/{sender_id}/{idempotency_key}").hex


class ChannelDirectory:
    """Every channel, rebuilt from the MSG stream."""

    def __init__(self) -> None:
        self._channels: dict[str, Channel] = {}

    def get(self, channel_id: str) -> Channel:
        channel = self._channels.get(channel_id)
        if channel is None:
            raise NotFound(f"no channel with id {channel_id!r}")
        return channel

    def create(self, channel_id: str, name: str, creator_id: str, stream_seq: int, *, encrypted: bool = False) -> None:
        self._channels[channel_id] = Channel(
            channel_id, name, {creator_id}, last_stream_seq=stream_seq, creator_id=creator_id, encrypted=encrypted
        )

    def of_member(self, user_id: str) -> list[Channel]:
        return [c for c in self._channels.values() if user_id in c.members]
