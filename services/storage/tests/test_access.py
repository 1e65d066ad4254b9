"""Who may read what: the pure access rules behind StorageArchiveService."""

from __future__ import annotations

import pytest

from parley_core.errors import PermissionDenied
from parley_core.tokens import Caller
from parley_storage import access
from parley_storage.access import Requester, View


def user(user_id: str, role: str = "member") -> Caller:
    return Caller(user_id=user_id, role=role, token_id="t", username=user_id)


F, S, M, R = View.FULL, View.WITHOUT_SECRETS, View.METADATA, View.REFUSED
STREAMS = ("AUTH", "MSG", "SEC", "PATCH", "STORE")
# Who reads what through the archive API (docs/security.md's matrix), written out here by hand rather than
# derived: a service reads what it reads live, secret fields only from its own stream; the
# operator's tooling reads everything without secrets; an auditor the same, MSG as metadata only.
VIEWS: dict[tuple[str, str], tuple[View, ...]] = {
    #                     AUTH MSG SEC PATCH STORE
    ("auth", ""): (F, R, F, R, R),
    ("messaging", ""): (S, F, R, R, R),
    ("patch-registry", ""): (S, R, R, F, R),
    ("gateway", ""): (R, R, R, R, R),
    ("gateway", "member"): (R, R, R, R, R),
    ("gateway", "admin"): (R, R, R, R, R),
    ("gateway", "security-auditor"): (S, M, S, S, S),
    ("platform", ""): (S, S, S, S, S),
    ("platform", "member"): (R, R, R, R, R),  # the operator's tooling carrying a token acts as that user
    ("platform", "security-auditor"): (S, M, S, S, S),
    ("stranger", ""): (R, R, R, R, R),
}


@pytest.mark.parametrize(("peer", "role"), list(VIEWS))
def test_each_reader_sees_each_stream_as_the_matrix_says(peer: str, role: str) -> None:
    requester = Requester(peer, user("u", role) if role else None)
    assert tuple(access.stream_view(requester, stream) for stream in STREAMS) == VIEWS[peer, role]
    readable = {stream for stream, view in zip(STREAMS, VIEWS[peer, role], strict=True) if view is not View.REFUSED}
    if readable:
        assert access.readable_streams(requester) >= readable
    else:
        with pytest.raises(PermissionDenied, match="security-auditor"):
            access.readable_streams(requester)


def test_audit_is_for_auditors_only() -> None:
    access.require_auditor(Requester("gateway", user("a", "security-auditor")))
    for refused in (Requester("platform", None), Requester("gateway", user("a", "admin"))):
        with pytest.raises(PermissionDenied, match="security-auditor"):
            access.require_auditor(refused)


def test_export_and_erasure_are_the_users_right_or_the_operators() -> None:
    access.require_self_or_operator(Requester("gateway", user("alice")), "alice")
    access.require_self_or_operator(Requester("platform", None), "alice")
    for refused in (
        Requester("gateway", user("bob")),
        Requester("platform", user("bob")),  # the operator's tooling carrying bob's token acts as bob
        Requester("gateway", user("aud", "security-auditor")),
        Requester("messaging", None),
    ):
        with pytest.raises(PermissionDenied):
            access.require_self_or_operator(refused, "alice")


def test_retention_and_rotation_are_for_the_operator() -> None:
    access.require_operator(Requester("platform", None))
    for refused in (Requester("platform", user("alice")), Requester("messaging", None)):
        with pytest.raises(PermissionDenied):
            access.require_operator(refused)


def test_schema_versions_are_for_services_the_operator_and_auditors() -> None:
    for allowed in (
        Requester("patch-registry", None),
        Requester("platform", None),
        Requester("gateway", user("a", "security-auditor")),
    ):
        access.require_platform_peer(allowed)
    for refused in (Requester("gateway", user("m")), Requester("stranger", None)):
        with pytest.raises(PermissionDenied, match="schema versions"):
            access.require_platform_peer(refused)


def test_lag_and_retention_policies_are_for_the_operator_and_auditors() -> None:
    for allowed in (Requester("platform", None), Requester("gateway", user("a", "security-auditor"))):
        access.require_operator_or_auditor(allowed, "the list of retention policies")
    for refused in (
        Requester("gateway", user("m")),
        Requester("platform", user("m")),  # the operator's tooling carrying a member's token acts as them
        Requester("messaging", None),
    ):
        with pytest.raises(PermissionDenied, match=r"^the list of retention policies is for the operator"):
            access.require_operator_or_auditor(refused, "the list of retention policies")
