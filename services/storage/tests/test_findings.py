"""What the detector records for a finding (detection/findings.py) and the STORE events codec.py
writes for it: no server, no log."""

from __future__ import annotations

from typing import Literal

import pytest
from parley.storage.v1 import events_pb2 as pb

from parley_core.actor import Actor
from parley_core.topology import anomaly_subject, due_subject
from parley_storage import codec
from parley_storage.detection import Anomaly, AnomalyKind, Response
from parley_storage.detection.findings import (
    MAX_REASON,
    RESPONSE_MAX_AGE_S,
    AnomalyRecorded,
    SessionActionDue,
    SourceSlowdownDue,
    decide_finding,
)

NOW = 1_800_000_000.0
Verb = Literal["revoke", "stepup"]
STORAGE = Actor.service("storage")


def anomaly(*, session_id: str = "s1", source: str = "10.0.0.9", at: float = NOW, why: str = "odd") -> Anomaly:
    return Anomaly(
        kind=AnomalyKind.SESSION_TWO_SOURCES,
        key="k1",
        subject="user u1",
        evidence={"sources": "2"},
        score=2.0,
        why=why,
        at=at,
        triggers=("e1", "e2"),
        user_id="u1",
        session_id=session_id,
        source=source,
    )


def decided(found: Anomaly, configured: Response) -> list[object]:
    facts, recorded = decide_finding(found, configured=configured, now=NOW, slow_source_s=60.0)
    assert facts[0] is recorded
    return list(facts)


def test_an_alert_is_recorded_and_asks_nothing_of_auth() -> None:
    found = anomaly()
    assert decided(found, "alert") == [AnomalyRecorded(found, "alert")]


@pytest.mark.parametrize(("configured", "verb"), [("revoke_session", "revoke"), ("step_up", "stepup")])
def test_a_session_response_asks_auth_to_act_on_the_session(configured: Response, verb: Verb) -> None:
    found = anomaly()
    assert decided(found, configured) == [
        AnomalyRecorded(found, configured),
        SessionActionDue(verb, found, f"anomaly {found.kind}: odd"),
    ]


def test_a_slowdown_lasts_from_the_finding_for_the_configured_time() -> None:
    found = anomaly()
    assert decided(found, "slow_source")[1] == SourceSlowdownDue(found, NOW + 60.0, f"anomaly {found.kind}: odd")


@pytest.mark.parametrize(
    ("found", "configured"),
    [
        (anomaly(session_id=""), "revoke_session"),  # names no session to revoke
        (anomaly(source=""), "slow_source"),  # names no source to slow down
        (anomaly(at=NOW - RESPONSE_MAX_AGE_S - 1), "revoke_session"),  # too old: long gone or judged
    ],
)
def test_a_response_with_nothing_to_act_on_becomes_an_alert(found: Anomaly, configured: Response) -> None:
    assert decided(found, configured) == [AnomalyRecorded(found, "alert")]


def test_the_reason_auth_is_given_is_bounded() -> None:
    facts = decided(anomaly(why="x" * 2000), "revoke_session")
    assert isinstance(facts[1], SessionActionDue)
    assert len(facts[1].reason) == MAX_REASON


def test_findings_are_written_with_ids_that_follow_the_finding() -> None:
    found = anomaly()
    recorded = codec.new_event(AnomalyRecorded(found, "revoke_session"), STORAGE)
    assert codec.subject_of(AnomalyRecorded(found, "alert")) == anomaly_subject(found.kind, "k1")
    assert recorded.event_id == found.event_id
    assert recorded.payload == pb.AnomalyDetected(
        kind=found.kind,
        subject="user u1",
        evidence={"sources": "2"},
        score=2.0,
        why="odd",
        response="revoke_session",
        user_id="u1",
        session_id="s1",
        source="10.0.0.9",
        trigger_event_ids=["e1", "e2"],
    )
    revoke = SessionActionDue("revoke", found, "r")
    assert codec.subject_of(revoke) == due_subject("auth", "revoke", "s1")
    assert codec.new_event(revoke, STORAGE).event_id == f"{found.event_id}-revoke"
    assert isinstance(codec.new_event(SessionActionDue("stepup", found, "r"), STORAGE).payload, pb.SessionStepUpDue)
    slow = codec.new_event(SourceSlowdownDue(found, NOW + 60, "r"), STORAGE)
    assert codec.subject_of(SourceSlowdownDue(found, NOW + 60, "r")) == due_subject("auth", "slow", "k1")
    assert (slow.event_id, slow.aggregate_type) == (f"{found.event_id}-slow", "source")
    assert slow.payload == pb.SourceSlowdownDue(
        source="10.0.0.9", until_unix=NOW + 60, anomaly_event_id=found.event_id, reason="r"
    )
