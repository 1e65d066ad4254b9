"""The compliance report's security sections folded from archived events, without a platform (the
e2e test in tests/e2e/test_compliance_report.py fills each from a running one)."""

from __future__ import annotations

from google.protobuf.message import Message
from parley.auth.v1 import events_pb2 as auth
from parley.storage.v1 import events_pb2 as store
from parley.storage.v1 import storage_pb2

from parley_cli.compliance import _table
from parley_cli.compliance_security import KeyAge, facts_from
from parley_cli.security_sections import render_sections
from parley_core.envelope import NewEvent, seal

DAY = 86400.0


def archived(stream: str, seq: int, payload: Message, at: float, actor: str = "platform") -> storage_pb2.ArchivedEvent:
    envelope = seal(
        NewEvent(aggregate_type="x", aggregate_id="x", payload=payload, actor=actor),
        aggregate_version=1,
        producer="test",
        trace_context={},
    )
    return storage_pb2.ArchivedEvent(
        stream=stream,
        stream_seq=seq,
        event_type=envelope.event_type,
        occurred_at_ns=int(at * 1e9),
        actor=actor,
        envelope=envelope.SerializeToString(),
    )


def test_keys_mfa_by_role_and_erasures_with_their_audit_reference() -> None:
    now = 100 * DAY
    auth_events = [
        archived("AUTH", 1, auth.SigningKeyPublished(key_id="k1"), 1 * DAY),
        archived("AUTH", 2, auth.SigningKeyPublished(key_id="k2", replaces_key_id="k1"), 50 * DAY),
        archived("AUTH", 3, auth.AuditKeyPublished(key_id="a1"), 1 * DAY),
        archived("AUTH", 4, auth.UserRegistered(user_id="u1", username="alice", role="member"), 2 * DAY),
        archived("AUTH", 5, auth.UserRegistered(user_id="u2", username="bob", role="member"), 2 * DAY),
        archived("AUTH", 6, auth.UserRegistered(user_id="u3", username="olga", role="operator"), 2 * DAY),
        archived("AUTH", 7, auth.TotpEnrolled(user_id="u1"), 3 * DAY),
        archived("AUTH", 8, auth.TotpEnrolled(user_id="u3"), 3 * DAY),
        archived("AUTH", 9, auth.TotpReset(user_id="u3"), 4 * DAY),  # lost phone: no second factor now
        archived("AUTH", 10, auth.RoleAssigned(user_id="u2", role="admin"), 5 * DAY),
        archived("AUTH", 11, auth.MfaRequirementSet(role="admin", required=True), 5 * DAY),
        archived("AUTH", 12, auth.UserRegistered(user_id="gone", role="member"), 6 * DAY),
        archived("AUTH", 13, auth.AccountErased(user_id="gone"), 90 * DAY),
        # The roll-out prober, registered by the platform identity: synthetic, not counted.
        archived("AUTH", 14, auth.UserRegistered(user_id="p1", username="canary-prober-0a1b", role="member"), 7 * DAY),
        # A look-alike registered by a user's token before the prefix was reserved: a person's account.
        archived(
            "AUTH", 15, auth.UserRegistered(user_id="p2", username="canary-prober-x", role="guest"), 7 * DAY, "u2"
        ),
    ]
    store_events = [
        archived("STORE", 4, store.UserDataErased(user_id="gone", erased_by="platform", reason="asked"), 90 * DAY),
        archived("STORE", 5, store.KeyEncryptionKeyRotated(new_kek_id="kek-2"), 90 * DAY),
        archived("STORE", 6, store.AnomalyDetected(kind="password_spraying", source="10.0.0.9", why="w"), 92 * DAY),
    ]
    sec_events = [
        archived("SEC", 6, auth.SecurityEventRecorded(kind="login_succeeded", user_id="u1", chain_index=6), 85 * DAY),
        archived("SEC", 7, auth.SecurityEventRecorded(kind="account_erased", user_id="gone", chain_index=7), 90 * DAY),
        archived("SEC", 8, auth.SecurityEventRecorded(kind="lockout", user_id="u1", chain_index=8), 91 * DAY),
    ]
    facts = facts_from(
        auth=auth_events,
        store=store_events,
        sec=sec_events,
    )
    states = {k.key_id: k.state for k in facts.keys}
    assert states == {"k1": "replaced by k2", "k2": "in use", "a1": "in use"}
    coverage = {c.role: (c.accounts, c.with_second_factor, c.required) for c in facts.mfa}
    assert coverage["member"] == (1, 1, False)  # u1; u2 is admin now, the erased one and the prober not counted
    assert coverage["guest"] == (1, 0, False)  # the look-alike
    assert facts.synthetic == 1
    assert coverage["admin"] == (1, 0, True)
    assert coverage["operator"] == (1, 0, False)

    report = "\n".join(render_sections(facts, since=80 * DAY, now=now, table=_table))
    assert "| access-token signing key (Ed25519) | k1 | 1970-01-02 00:00 UTC | 99 days | - | replaced by k2 |" in report
    assert "1 of 4 accounts (25%) have a second factor" in report
    assert "Not counted: 1 synthetic account(s), the platform's own roll-out probers (`canary-prober…`" in report
    assert "| admin | 1 | 0 | 0% | required |" in report
    assert "Last KEK rotation: 1970-04-01 00:00 UTC (10 days ago), now KEK `kek-2`" in report
    assert "| gone | platform | asked | STORE #4 | SEC record #7 |" in report
    assert "None: every channel keeps its messages" in report
    assert "Last backup created: none recorded in the backup journal." in report
    events = report.split("## Security events in the period\n", 1)[1]
    assert "| login_succeeded | 1 |" in events
    assert "| lockout | 1 |" in events
    assert "| anomaly:password_spraying | 1 |" in events
    assert "| lockout | alice | - | SEC record #8 |" in events  # listed by name: a reviewer looks at it
    assert "| anomaly:password_spraying | 10.0.0.9 | w (response: alert) | STORE #6 |" in events
    assert "| login_succeeded | u1 |" not in events  # counted, not listed
    # An erasure before the period is counted in all, not listed.
    earlier = "\n".join(render_sections(facts, since=95 * DAY, now=now, table=_table))
    assert "0 erasure(s) in the period; 1 archived in all." in earlier


def test_anomalies_name_people_and_the_probers_events_are_not_counted() -> None:
    planner, approver, prober = "137e7b" + "0" * 26, "9696aa" + "0" * 26, "ab" * 16
    auth_events = [
        archived("AUTH", 1, auth.UserRegistered(user_id=planner, username="olga", role="operator"), 1 * DAY),
        archived("AUTH", 2, auth.UserRegistered(user_id=approver, username="bob", role="operator"), 1 * DAY),
        archived("AUTH", 3, auth.UserRegistered(user_id=prober, username="canary-prober-0a1b", role="member"), DAY),
    ]
    why = f"roll-out r-1 planned by {planner} was approved by {approver} 18s later (a review takes at least 600s)"
    store_events = [
        archived(
            "STORE", 7, store.AnomalyDetected(kind="rushed_rollout", subject=f"actor:{approver}", why=why), 2 * DAY
        ),
        archived("STORE", 8, store.AnomalyDetected(kind="new_session_source", user_id=prober, why="w"), 2 * DAY),
    ]
    sec_events = [
        archived("SEC", 1, auth.SecurityEventRecorded(kind="role_assigned", user_id=prober, chain_index=1), 2 * DAY),
        archived(
            "SEC",
            2,
            auth.SecurityEventRecorded(kind="login_succeeded", user_id=prober, chain_index=2),
            2 * DAY,
            actor=f"user:{prober}",
        ),
        archived("SEC", 3, auth.SecurityEventRecorded(kind="lockout", user_id=approver, chain_index=3), 2 * DAY),
    ]
    report_key = KeyAge("compliance report signing key (Ed25519)", "bee9ea0fd4f18b66", 1 * DAY)
    facts = facts_from(
        auth=auth_events,
        store=store_events,
        sec=sec_events,
        report_key=report_key,
    )
    # The finding keeps ids (a name must not outlive an erasure); the report shows names.
    rushed = next(e for e in facts.events if e.kind == "anomaly:rushed_rollout")
    assert rushed.concerns == f"actor:{approver}"
    assert planner in rushed.detail
    report = "\n".join(render_sections(facts, since=0.0, now=3 * DAY, table=_table))
    assert "| compliance report signing key (Ed25519) | bee9ea0fd4f18b66 |" in report
    events = report.split("## Security events in the period\n", 1)[1]
    assert "3 event(s) of the platform's synthetic accounts (the roll-out probers) not counted." in events
    assert "| anomaly:rushed_rollout | bob | roll-out r-1 planned by olga was approved by bob 18s later" in events
    assert approver not in events
    assert planner not in events
    assert "role_assigned" not in events
    assert "login_succeeded" not in events
    assert "new_session_source" not in events
    assert "| lockout | bob |" in events
