"""The range every number and time in a request must lie in, checked before any handler runs.

Sequence numbers, positions, versions and counts are kept as signed 64-bit integers (SQL BIGINT,
JetStream sequences), and times as 64-bit nanoseconds since 1970. A value past those would
overflow deep inside a query (an INTERNAL error for the client); refused at the door it is an
INVALID_ARGUMENT that names the field. The runner applies this to every request of every
service; what a field means (a page of at most 500, a role that exists) stays with its service.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from parley_core.errors import InvalidArgument

__all__ = ["LATEST_TIME", "MAX_NUMBER", "check_ranges"]

MAX_NUMBER = 2**63 - 1
# The last second whose every nanosecond 64-bit nanoseconds hold: 2262-04-11T23:47:15Z.
_LATEST_SECONDS = MAX_NUMBER // 1_000_000_000 - 1
LATEST_TIME = datetime.fromtimestamp(_LATEST_SECONDS, UTC)
_MAX_NANOS = 999_999_999
_INTEGERS = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def check_ranges(request: Message) -> None:
    """Refuse (InvalidArgument) a request with a number outside 0..2^63-1 or a time outside
    1970-01-01..2262-04-11, at any depth; fields left unset are not looked at."""
    _check(request, "")


def _check(message: Message, prefix: str) -> None:
    if isinstance(message, Timestamp):
        _check_time(message, prefix.rstrip("."))
        return
    for field, value in message.ListFields():
        name = prefix + field.name
        if (entry := field.message_type) is not None and entry.GetOptions().map_entry:
            for key, item in value.items():
                _check_value(entry.fields_by_name["value"], item, f"{name}[{key!r}]")
        elif field.type == FieldDescriptor.TYPE_MESSAGE and field.is_repeated:
            for i, item in enumerate(value):
                _check(item, f"{name}[{i}].")
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            _check(value, f"{name}.")
        elif field.type in _INTEGERS:
            for item in value if field.is_repeated else (value,):
                _check_number(item, name)


def _check_value(field: FieldDescriptor, value: object, name: str) -> None:
    if isinstance(value, Message):
        _check(value, f"{name}.")
    elif field.type in _INTEGERS:
        assert isinstance(value, int)
        _check_number(value, name)


def _check_number(value: int, name: str) -> None:
    if not 0 <= value <= MAX_NUMBER:
        raise InvalidArgument(f"{name} must be between 0 and {MAX_NUMBER}; it is {value}")


def _check_time(value: Timestamp, name: str) -> None:
    if not (0 <= value.seconds <= _LATEST_SECONDS and 0 <= value.nanos <= _MAX_NANOS):
        raise InvalidArgument(
            f"{name} must be a time from 1970-01-01 to {LATEST_TIME:%Y-%m-%d} (seconds {value.seconds}, "
            f"nanos {value.nanos}; nanos 0..{_MAX_NANOS})"
        )
