"""The security event stream through the gateway (WatchSecurityEvents): a security-auditor or an
admin gets the recent audit records and then new ones as they are archived, filtered by kind and
by actor; every other role is refused."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from parley.storage.v1 import storage_pb2

from parley_testing.stack import TIMEOUT_S, Stack, bearer


async def failed_login(stack: Stack, username: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await stack.login(username, "not-the-password-at-all")


async def test_the_security_stream_is_live_filtered_and_for_auditors_and_admins_only(stack: Stack) -> None:
    for name, role in (("audrey", "security-auditor"), ("ada", "admin"), ("alice", "member"), ("bob", "member")):
        await stack.create_user(name, role)
    for role in ("member", "guest", "operator"):
        await stack.create_user(f"user-{role}", role)
        token = bearer((await stack.login(f"user-{role}")).access_token)
        refused = stack.gateway().WatchSecurityEvents(storage_pb2.WatchSecurityEventsRequest(), metadata=token)
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await anext(aiter(refused))
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED, role

    await failed_login(stack, "alice")  # before the stream opens: in its backlog
    auditor = bearer((await stack.login("audrey")).access_token)
    watched = stack.gateway().WatchSecurityEvents(
        storage_pb2.WatchSecurityEventsRequest(kinds=["login_failed"], actor="alice"), metadata=auditor
    )
    notices: list[storage_pb2.SecurityEventNotice] = []

    async def read(count: int) -> None:
        async for notice in watched:
            if notice.caught_up:
                continue
            notices.append(notice)
            if len(notices) == count:
                return

    await asyncio.wait_for(read(1), TIMEOUT_S)
    assert (notices[0].kind, notices[0].username) == ("login_failed", "alice")
    assert notices[0].chain_index > 0
    assert notices[0].stream == "SEC"

    # Live: bob's failure and alice's login are filtered out; alice's next failure arrives.
    await failed_login(stack, "bob")
    await stack.login("alice")
    await failed_login(stack, "alice")
    await asyncio.wait_for(read(2), TIMEOUT_S)
    assert [(n.kind, n.username) for n in notices] == [("login_failed", "alice")] * 2
    assert notices[1].chain_index > notices[0].chain_index
    watched.cancel()

    # An admin may watch too, every kind: alice's login is there.
    admin = bearer((await stack.login("ada")).access_token)
    everything = stack.gateway().WatchSecurityEvents(
        storage_pb2.WatchSecurityEventsRequest(actor="alice", backlog=10), metadata=admin
    )
    kinds: list[str] = []

    async def until_login() -> None:
        async for notice in everything:
            if notice.caught_up:
                continue
            kinds.append(notice.kind)
            if notice.kind == "login_succeeded":
                return

    await asyncio.wait_for(until_login(), TIMEOUT_S)
    everything.cancel()
    # alice's every kind, oldest first
    assert "login_failed" in kinds
    assert "role_assigned" in kinds


def test_a_finding_about_an_approver_names_the_account_it_concerns() -> None:
    """rushed_rollout names its approver only in its subject ("actor:<id>"): the console's Who
    column shows that account (by name, looked up there), not "-"; an address or a service is no one."""
    from parley.storage.v1.events_pb2 import AnomalyDetected

    from parley_core.envelope import NewEvent, seal
    from parley_storage.archive import StoredEvent
    from parley_storage.security_feed import notice_of

    def notice(finding: AnomalyDetected) -> storage_pb2.SecurityEventNotice:
        envelope = seal(
            NewEvent(aggregate_type="anomaly", aggregate_id="a", payload=finding, actor="service:storage"),
            aggregate_version=1,
            producer="test",
            trace_context={},
        )
        stored = StoredEvent(
            "STORE", 9, "s", "e", envelope.event_type, "anomaly", "a", 1, 0, "service:storage", envelope
        )
        found = notice_of(stored)
        assert found is not None
        return found

    approver = "9696" + "a" * 28
    why = f"roll-out r-1 planned by p was approved by {approver} 18s later"
    assert notice(AnomalyDetected(kind="rushed_rollout", subject=f"actor:{approver}", why=why)).user_id == approver
    assert notice(AnomalyDetected(kind="send_rate", subject="user:u1", user_id="u1")).user_id == "u1"
    assert notice(AnomalyDetected(kind="short_retention", subject="actor:service:patch-registry")).user_id == ""
    assert notice(AnomalyDetected(kind="password_spraying", subject="source:10.0.0.9", source="10.0.0.9")).user_id == ""
