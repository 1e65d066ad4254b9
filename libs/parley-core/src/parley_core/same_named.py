"""Copying fields between two shapes that name them alike: a domain record and its protobuf,
an event and the record it makes, two services' messages of the same facts.

    auth_pb2.Device(**same_named(device, *DEVICE_FIELDS), one_time_keys_left=len(device.unclaimed))

Written out, such a copy is a column of `name=source.name` lines that says only "the same";
this way the fields that are copied as they are stand apart from the ones that are converted.
A name the source lacks raises AttributeError, so a renamed field cannot go silently missing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a type for the checker: copying fields imports no protobuf (pure domains use it)
    from google.protobuf.message import Message

__all__ = ["proto_field_names", "same_named"]


def same_named(source: object, *names: str) -> dict[str, Any]:
    """`source`'s values of `names`, as keyword arguments for a constructor that names them alike."""
    return {name: getattr(source, name) for name in names}


def proto_field_names(message: type[Message], *, leaving: Iterable[str] = ()) -> tuple[str, ...]:
    """Every field of a protobuf message type, in declaration order, but those in `leaving`."""
    left = set(leaving)
    return tuple(f.name for f in message.DESCRIPTOR.fields if f.name not in left)
