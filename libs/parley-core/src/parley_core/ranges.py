"""The range every number and time in a request must lie in, checked before any handler runs.

Sequence numbers, positions, versions and counts are kept as signed 64-bit integers (SQL BIGINT,
JetStream sequences), and times as 64-bit nanoseconds since 1970. A value past those would
overflow deep inside a query (an INTERNAL error for the client); refused at the door it is an
INVALID_ARGUMENT that names the field. The runner applies this to every request of every
service; what a field means (a page of at most 500, a role that exists) stays with its service.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import NamedTuple, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from parley_core.errors import InvalidArgument

__all__ = ["LATEST_TIME", "MAX_NUMBER", "check_ranges"]

MAX_NUMBER = 2**63 - 1
# The last second whose every nanosecond 64-bit nanoseconds hold: 2262-04-11T23:47:15Z.
_LATEST_SECONDS = MAX_NUMBER // 1_000_000_000 - 1
LATEST_TIME = datetime.fromtimestamp(_LATEST_SECONDS, UTC)
_MAX_NANOS = 999_999_999
# Integer types whose values can lie outside 0..2^63-1 (a uint32 or fixed32 cannot: never looked at).
_INTEGERS = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
    }
)

# How one field is looked at: a number, numbers, a message, messages, or a map's values.
_NUMBER, _NUMBERS, _MESSAGE, _MESSAGES, _MAP = range(5)


class _Step(NamedTuple):
    name: str
    kind: int
    value_field: FieldDescriptor | None  # a map's value field


# Per message type, the fields that can hold an out-of-range number or time, in field-number order
# (the order ListFields gives, so the first one refused is the same): a request's strings, bools
# and small unsigned numbers are never looked at.
_plans: dict[Descriptor, tuple[_Step, ...]] = {}


def check_ranges(request: Message) -> None:
    """Refuse (InvalidArgument) a request with a number outside 0..2^63-1 or a time outside
    1970-01-01..2262-04-11, at any depth; fields left unset are not looked at."""
    _check(request, "")


def _check(message: Message, prefix: str) -> None:
    if isinstance(message, Timestamp):
        _check_time(message, prefix.rstrip("."))
        return
    for name, kind, value_field in _plan(cast(Descriptor, message.DESCRIPTOR)):
        path = prefix + name
        if kind == _NUMBER:
            _check_number(getattr(message, name), path)  # unset: 0, in range
        elif kind == _MESSAGE:
            if message.HasField(name):
                _check(getattr(message, name), f"{path}.")
        elif kind == _MESSAGES:
            for i, item in enumerate(getattr(message, name)):
                _check(item, f"{path}[{i}].")
        elif kind == _NUMBERS:
            for item in getattr(message, name):
                _check_number(item, path)
        else:
            assert value_field is not None
            for key, item in getattr(message, name).items():
                _check_value(value_field, item, f"{path}[{key!r}]")


def _plan(descriptor: Descriptor) -> tuple[_Step, ...]:
    plan = _plans.get(descriptor)
    if plan is None:
        plan = _plans[descriptor] = tuple(_steps(descriptor))
    return plan


def _steps(descriptor: Descriptor) -> Iterator[_Step]:
    for field in sorted(descriptor.fields, key=lambda f: f.number):
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            value_field = entry.fields_by_name["value"]
            if _may_hold_numbers(value_field):
                yield _Step(field.name, _MAP, value_field)
        elif _may_hold_numbers(field):
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                yield _Step(field.name, _MESSAGES if field.is_repeated else _MESSAGE, None)
            else:
                yield _Step(field.name, _NUMBERS if field.is_repeated else _NUMBER, None)


def _may_hold_numbers(field: FieldDescriptor) -> bool:
    """Whether a value of `field` can hold a number or time that _check looks at, at any depth."""
    if field.type in _INTEGERS:
        return True
    if field.type != FieldDescriptor.TYPE_MESSAGE:
        return False
    seen: set[Descriptor] = set()
    waiting = [field.message_type]
    while waiting:  # every message type reachable from the field's, each once (types may nest themselves)
        descriptor = waiting.pop()
        if descriptor is None or descriptor in seen:
            continue
        if descriptor.full_name == Timestamp.DESCRIPTOR.full_name:
            return True
        seen.add(descriptor)
        for inner in descriptor.fields:
            if inner.type in _INTEGERS:
                return True
            if inner.type == FieldDescriptor.TYPE_MESSAGE:
                waiting.append(inner.message_type)
    return False


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
