"""The registry's read model of the PATCH stream, without a server: what each event changes, and
where each aggregate stands (the position a command appends after, parley_core.event_log)."""

from __future__ import annotations

from google.protobuf.message import Message

from parley_core.actor import Actor
from parley_core.bus import ReceivedEvent
from parley_core.envelope import NewEvent, seal
from parley_core.event_log import Position
from parley_core.topology import ROLLOUTS_FILTER, finding_subject, rollout_subject
from parley_patch_registry import codec
from parley_patch_registry.findings import DeadlinePolicy, FindingDetected
from parley_patch_registry.projection import RegistryProjection
from parley_patch_registry.rollout import Rollout


def received(subject: str, payload: Message, *, version: int, stream_seq: int) -> ReceivedEvent:
    event = NewEvent(aggregate_type="test", aggregate_id="x", payload=payload, actor=Actor.user("alice"))
    envelope = seal(event, aggregate_version=version, producer="test", trace_context={})
    return ReceivedEvent(envelope, subject, "PATCH", stream_seq, 1, {})


def test_a_rollout_stands_after_its_last_event_in_the_stream() -> None:
    projection = RegistryProjection(DeadlinePolicy.default())
    # A new one goes after every roll-out's newest event (none yet): one unfinished per service.
    assert projection.rollout_position("r-1") == Position(0, 0, of=ROLLOUTS_FILTER)
    _, events = Rollout.plan(
        rollout_id="r-1",
        service="messaging",
        from_version="0.1.0",
        to_version="0.2.0",
        target_path="messaging/parley_messaging-0.2.0-py3-none-any.whl",
        old_instances=("m-1",),
        release_published_by="dave",
        actor="alice",
        actor_role="operator",
        at=1.0,
    )
    for offset, event in enumerate(events):
        projection.apply(
            received(rollout_subject("r-1"), codec.to_proto(event), version=offset + 1, stream_seq=40 + offset)
        )

    assert projection.rollouts["r-1"].state == "planned"
    assert projection.rollout_position("r-1") == Position(len(events), 40 + len(events) - 1)
    assert projection.rollout_position("r-2") == Position(0, 40 + len(events) - 1, of=ROLLOUTS_FILTER)


def test_a_finding_counts_its_events_and_keeps_its_last_sequence() -> None:
    projection = RegistryProjection(DeadlinePolicy.default())
    subject = finding_subject("PYSEC-1", "messaging", "pyjwt")
    detected = FindingDetected(
        advisory_id="PYSEC-1",
        service="messaging",
        package="pyjwt",
        instance_id="m-1",
        host="h1",
        installed_version="2.0.0",
        priority="high",
        detected_at=1.0,
        deadline=2.0,
    )
    assert projection.finding_position(subject) == Position(0, 0)

    projection.apply(received(subject, codec.to_proto(detected), version=1, stream_seq=7))

    assert projection.finding_position(subject) == Position(1, 7)
