"""Times a protobuf event carries that no real clock wrote.

A `google.protobuf.Timestamp` holds any 64-bit second, but converting one outside the years
1 to 9999 (`ToNanoseconds`, `ToDatetime`) raises. A reader's projection converts them, so an
event with such a time, appended with a stolen credential, would halt every reader for good.
"""

from __future__ import annotations

from google.protobuf.message import Message

TIMESTAMP = "google.protobuf.Timestamp"
MIN_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z
MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z


def invalid_time(message: Message, path: str = "") -> str | None:
    """The first field (a dotted path) holding a time out of the range, else None."""
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        name = f"{path}{field.name}"
        if field.message_type.GetOptions().map_entry:
            entry_value = field.message_type.fields_by_name["value"]
            values = list(value.values()) if entry_value.message_type is not None else []
        elif field.is_repeated:
            values = list(value)
        else:
            values = [value]
        for item in values:
            if field.message_type.full_name == TIMESTAMP and not _in_range(item):
                return name
            if field.message_type.full_name != TIMESTAMP and (inner := invalid_time(item, f"{name}.")) is not None:
                return inner
    return None


def _in_range(timestamp: Message) -> bool:
    seconds, nanos = getattr(timestamp, "seconds", 0), getattr(timestamp, "nanos", 0)
    return MIN_SECONDS <= seconds <= MAX_SECONDS and 0 <= nanos < 1_000_000_000
