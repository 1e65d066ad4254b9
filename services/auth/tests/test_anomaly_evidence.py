"""What a detector's response must find in auth's own records before auth carries it out; no I/O.

With real services, test_trust_boundaries.py (storage's tests) forges each response with
storage's credential and sees it refused, and test_detection.py sees the real ones carried out.
"""

from __future__ import annotations

from parley_auth.anomaly_evidence import CLOCK_SKEW_S, RESPONSE_MAX_AGE_S, DetectionWindows, EvidenceRules
from parley_auth.lockout import LockoutBook, LockoutPolicy
from parley_auth.sessions import Session

NOW = 1_800_000_000.0
RULES = EvidenceRules(DetectionWindows(spraying_accounts=3, spraying_window_s=600, new_source_window_s=3600))
LATE = RESPONSE_MAX_AGE_S + CLOCK_SKEW_S


def test_only_a_session_a_rule_could_name_may_be_revoked_or_stepped_up() -> None:
    usual = Session("s1", "alice", started_at=NOW - 60, source="ipv4:10.0.0.1", last_source="ipv4:10.0.0.1")
    assert RULES.session_evidence(usual, NOW) is None
    new = Session("s2", "alice", started_at=NOW - 3600 - LATE + 1, source="ipv4:10.0.0.9", first_from_source=True)
    assert RULES.session_evidence(new, NOW) is not None
    assert RULES.session_evidence(new, NOW + 2) is None  # past the new-source rule's window
    switched = Session("s3", "alice", started_at=NOW - 86_400, source="ipv4:10.0.0.1", switched_source_at=NOW - LATE)
    assert RULES.session_evidence(switched, NOW) is not None
    assert RULES.session_evidence(switched, NOW + 1) is None


def test_only_an_address_that_failed_logins_at_enough_accounts_lately_may_be_slowed() -> None:
    book = LockoutBook(
        pair_policy=LockoutPolicy(threshold=5, base_s=2.0, max_s=60.0),
        source_policy=LockoutPolicy(threshold=100, base_s=2.0, max_s=60.0),
    )
    for account in ("a", "b", "c"):
        book.record_failure(account, "ipv4:203.0.113.9", at=NOW - 60)
    book.record_failure("a", "ipv4:198.51.100.1", at=NOW - 60)
    book.record_failure("b", "ipv4:198.51.100.1", at=NOW - 60)
    assert RULES.spraying_evidence(book, "ipv4:203.0.113.9", NOW) is not None
    assert RULES.spraying_evidence(book, "ipv4:198.51.100.1", NOW) is None  # two accounts, not three
    assert RULES.spraying_evidence(book, "ipv4:192.0.2.1", NOW) is None  # no failure at all
    assert RULES.spraying_evidence(book, "ipv4:203.0.113.9", NOW + 600 + LATE) is None  # long ago
