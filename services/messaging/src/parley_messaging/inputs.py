"""What a request may carry, checked before any channel is read: names, bodies, topics, keys
and the ids derived from them. No I/O; InvalidArgument says what is wrong."""

from __future__ import annotations

import re
import uuid

from parley_core.contracts import MAX_RETENTION_DAYS
from parley_core.errors import InvalidArgument

MAX_CHANNEL_NAME = 64
MAX_BODY_CHARS = 4000
MAX_IDEMPOTENCY_KEY = 128
MAX_TOPIC_CHARS = 500
MAX_DIRECT_OTHERS = 7
# What a channel id is (created_channel_id: a uuid's hex); anything else is no channel and is
# never looked up in the log, where a wildcard would name other subjects.
CHANNEL_ID = re.compile(r"[0-9a-f]{32}")
IDEMPOTENCY_NAMESPACE = uuid.UUID("5b0c8f5e-7f0a-4a53-9a0e-6c1f2f1d9e11")


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


def created_channel_id(creator_id: str, idempotency_key: str) -> str:
    """Same creation, same channel: a retried CreateChannel with its key finds the first one
    (and a creation of someone else's never meets it: the creator is part of the id)."""
    return uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"channel/{creator_id}/{idempotency_key}").hex


def validate_retention_days(days: int) -> int:
    if days > MAX_RETENTION_DAYS:
        raise InvalidArgument(f"days must be at most {MAX_RETENTION_DAYS} (or 0 to keep the messages forever)")
    return days


def validate_topic(topic: str) -> str:
    if len(topic) > MAX_TOPIC_CHARS or any(not ch.isprintable() for ch in topic):
        raise InvalidArgument(f"topic must be at most {MAX_TOPIC_CHARS} printable characters")
    return topic.strip()


def validate_direct_members(creator_id: str, user_ids: list[str]) -> tuple[str, ...]:
    others = tuple(dict.fromkeys(u for u in user_ids if u and u != creator_id))
    if not 1 <= len(others) <= MAX_DIRECT_OTHERS:
        raise InvalidArgument(f"a direct conversation has 1 to {MAX_DIRECT_OTHERS} other people")
    return others
