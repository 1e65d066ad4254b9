"""The registry's domain events (roll-outs, findings) to and from their protobuf form on the PATCH stream.

The protobuf messages mirror the dataclasses field for field (same names), so one pair of
functions covers all of them and a new event only needs its two declarations.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from google.protobuf.message import Message
from parley.patch.v1 import events_pb2

from parley_patch_registry import findings
from parley_patch_registry import rollout_events as domain

DomainEvent = domain.RolloutEvent | findings.FindingEvent

ROLLOUT_EVENTS: dict[type[domain.RolloutEvent], type[Message]] = {
    domain.RolloutPlanned: events_pb2.RolloutPlanned,
    domain.RolloutApproved: events_pb2.RolloutApproved,
    domain.StepStarted: events_pb2.StepStarted,
    domain.InstanceStarted: events_pb2.InstanceStarted,
    domain.GateEvaluated: events_pb2.GateEvaluated,
    domain.InstanceExited: events_pb2.InstanceExited,
    domain.InstanceDrained: events_pb2.InstanceDrained,
    domain.RolloutPaused: events_pb2.RolloutPaused,
    domain.RolloutResumed: events_pb2.RolloutResumed,
    domain.RollbackStarted: events_pb2.RollbackStarted,
    domain.RolloutCompleted: events_pb2.RolloutCompleted,
    domain.RolloutRolledBack: events_pb2.RolloutRolledBack,
}
FINDING_EVENTS: dict[type[findings.FindingEvent], type[Message]] = {
    findings.FindingDetected: events_pb2.FindingDetected,
    findings.FindingFixed: events_pb2.FindingFixed,
}
EVENTS: dict[type[DomainEvent], type[Message]] = {
    event: proto for table in (ROLLOUT_EVENTS, FINDING_EVENTS) for event, proto in table.items()
}
DOMAIN_BY_PROTO: dict[str, type[DomainEvent]] = {proto.DESCRIPTOR.full_name: event for event, proto in EVENTS.items()}


def to_proto(event: DomainEvent) -> Message:
    values: dict[str, Any] = {}
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        values[f.name] = list(value) if isinstance(value, tuple) else value
    return EVENTS[type(event)](**values)


def from_proto(message: Message) -> DomainEvent | None:
    """None for PATCH events that are neither roll-out nor finding events."""
    cls = DOMAIN_BY_PROTO.get(message.DESCRIPTOR.full_name)
    if cls is None:
        return None
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        value = getattr(message, f.name)
        values[f.name] = value if isinstance(value, str | bytes | int | float | bool) else tuple(value)
    return cls(**values)
