"""How auth's projection applies an event: where it sits in the log (`Recorded`), and the table
of appliers, one per event type, that each apply_* module fills with `applies`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.message import Message

from parley_auth.auth_state import AuthState
from parley_core.bus import ReceivedEvent


@dataclass(frozen=True)
class Recorded:
    """Where an event sits in the log: what an applier needs besides the payload."""

    subject: str
    stream_seq: int
    aggregate_id: str
    aggregate_version: int
    event_id: str
    at: float  # occurred_at, in Unix seconds

    @classmethod
    def of(cls, event: ReceivedEvent) -> Recorded:
        envelope = event.envelope
        return cls(
            subject=event.subject,
            stream_seq=event.stream_seq,
            aggregate_id=envelope.aggregate_id,
            aggregate_version=envelope.aggregate_version,
            event_id=envelope.event_id,
            at=envelope.occurred_at.ToNanoseconds() / 1e9,
        )


Applier = Callable[[AuthState, Any, Recorded], None]
Appliers = dict[type[Message], Applier]
F = TypeVar("F", bound=Applier)


def applier_table() -> tuple[Appliers, Callable[..., Callable[[F], F]]]:
    """A table of appliers and its `applies(*event types)` decorator, which refuses a second
    applier of one type."""
    table: Appliers = {}

    def applies(*types: type[Message]) -> Callable[[F], F]:
        def register(applier: F) -> F:
            for event_type in types:
                assert event_type not in table, f"two appliers of {event_type.__name__}"
                table[event_type] = applier
            return applier

        return register

    return table, applies
