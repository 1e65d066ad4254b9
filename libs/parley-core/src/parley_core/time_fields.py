"""Times a protobuf event carries that no real clock wrote.

A `google.protobuf.Timestamp` holds any 64-bit second, but converting one outside the years
1 to 9999 (`ToNanoseconds`, `ToDatetime`) raises. A reader's projection converts them, so an
event with such a time, appended with a stolen credential, would halt every reader for good.
"""

from __future__ import annotations

from typing import NamedTuple, cast

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

TIMESTAMP = "google.protobuf.Timestamp"
MIN_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z
MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z


class _TimeField(NamedTuple):
    """A field through which a message of its type can hold a Timestamp."""

    name: str
    shape: str  # "single", "repeated" or "map" (a Timestamp, or a message holding one, as the value)
    is_timestamp: bool


# Every consumer checks every event it receives: each message type's fields that can lead to a
# Timestamp are worked out once (most lead to none), by the type's full name.
_TIME_FIELDS: dict[str, tuple[_TimeField, ...]] = {}


def invalid_time(message: Message, path: str = "") -> str | None:
    """The first field (a dotted path, in field-number order) holding a time out of the range, else None."""
    for name, shape, is_timestamp in _time_fields(cast(Descriptor, message.DESCRIPTOR)):
        if shape == "single":
            if not message.HasField(name):
                continue
            values: tuple[Message, ...] = (getattr(message, name),)
        elif shape == "map":
            values = tuple(getattr(message, name).values())
        else:
            values = tuple(getattr(message, name))
        for item in values:
            if is_timestamp and not _in_range(item):
                return f"{path}{name}"
            if not is_timestamp and (inner := invalid_time(item, f"{path}{name}.")) is not None:
                return inner
    return None


def _in_range(timestamp: Message) -> bool:
    seconds, nanos = getattr(timestamp, "seconds", 0), getattr(timestamp, "nanos", 0)
    return MIN_SECONDS <= seconds <= MAX_SECONDS and 0 <= nanos < 1_000_000_000


def _time_fields(descriptor: Descriptor) -> tuple[_TimeField, ...]:
    if (known := _TIME_FIELDS.get(descriptor.full_name)) is None:
        known = _TIME_FIELDS[descriptor.full_name] = tuple(_leading_to_time(descriptor))
    return known


def _leading_to_time(descriptor: Descriptor) -> list[_TimeField]:
    found = []
    for field in sorted(descriptor.fields, key=lambda f: f.number):
        kind = field.message_type
        if kind is None:
            continue
        shape = "repeated" if field.is_repeated else "single"
        if kind.GetOptions().map_entry:
            shape, kind = "map", kind.fields_by_name["value"].message_type
        if kind is not None and _reaches_timestamp(kind):
            found.append(_TimeField(field.name, shape, kind.full_name == TIMESTAMP))
    return found


def _reaches_timestamp(descriptor: Descriptor) -> bool:
    """Whether a Timestamp is among the message types reachable from `descriptor` (itself
    included) through its fields; a recursive type ends the walk."""
    seen: set[str] = set()
    todo = [descriptor]
    while todo:
        current = todo.pop()
        if current.full_name == TIMESTAMP:
            return True
        if current.full_name not in seen:
            seen.add(current.full_name)
            todo.extend(field.message_type for field in current.fields if field.message_type is not None)
    return False
