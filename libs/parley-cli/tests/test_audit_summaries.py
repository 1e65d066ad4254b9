"""`audit query` shows what an archived event said where it says something an auditor needs:
a security record's kind and detail, an anomaly finding's kind, score, why and response."""

from __future__ import annotations

import json

from google.protobuf.message import Message
from parley.auth.v1.events_pb2 import SecurityEventRecorded
from parley.storage.v1 import storage_pb2
from parley.storage.v1.events_pb2 import AnomalyDetected, SessionRevocationDue, SourceSlowdownDue

from parley_cli.audit_query import _json, _line
from parley_core.envelope import NewEvent, seal


def _archived(payload: Message, actor: str) -> storage_pb2.ArchivedEvent:
    event = NewEvent(aggregate_type="anomaly", aggregate_id="a1", payload=payload, actor=actor)
    envelope = seal(event, aggregate_version=1, producer="test", trace_context={})
    return storage_pb2.ArchivedEvent(
        event_type=envelope.event_type,
        aggregate_type="anomaly",
        aggregate_id="a1",
        actor=actor,
        envelope=envelope.SerializeToString(),
    )


FINDING = AnomalyDetected(
    kind="rushed_rollout",
    subject="actor:e05c",
    evidence={"rollout": "9b82a2775c9c", "seconds": "42"},
    score=14.3,
    why="roll-out 9b82a2775c9c planned by a0f2 was approved by e05c 42s later",
    response="alert",
)


def test_an_anomaly_finding_shows_its_kind_score_why_and_response() -> None:
    event = _archived(FINDING, "service:storage")
    line = _line(event, {})
    assert "rushed_rollout score 14.3, response alert: roll-out 9b82a2775c9c planned by a0f2" in line
    fields = json.loads(_json(event, {}))["anomaly"]
    assert (fields["kind"], fields["score"], fields["response"]) == ("rushed_rollout", 14.3, "alert")
    assert fields["why"] == FINDING.why
    assert fields["evidence"] == {"rollout": "9b82a2775c9c", "seconds": "42"}


def test_a_security_record_still_shows_its_kind_source_and_detail() -> None:
    record = SecurityEventRecorded(kind="source_slowed", source="ipv4:127.0.0.1", detail="until 2026-12-05 UTC: x")
    event = _archived(record, "service:storage")
    assert "source_slowed from ipv4:127.0.0.1: until 2026-12-05 UTC: x" in _line(event, {})
    assert json.loads(_json(event, {}))["security"]["kind"] == "source_slowed"
    erased = storage_pb2.ArchivedEvent(event_type=event.event_type, erased=True, envelope=event.envelope)
    assert "source_slowed" not in _line(erased, {})


def test_a_response_the_detector_asked_for_shows_what_and_why() -> None:
    slow = SourceSlowdownDue(source="ipv4:127.0.0.1", until_unix=1796437005, reason="password_spraying: 10 accounts")
    line = _line(_archived(slow, "service:storage"), {})
    assert "slow ipv4:127.0.0.1 until 2026-12-05 " in line
    assert line.endswith(" UTC: password_spraying: 10 accounts")
    revoke = SessionRevocationDue(session_id="s-1", user_id="u-1", reason="new_source_sensitive_change")
    assert _line(_archived(revoke, "service:storage"), {}).endswith("  revoke session s-1: new_source_sensitive_change")
    assert json.loads(_json(_archived(revoke, "service:storage"), {}))["response"]["session_id"] == "s-1"
