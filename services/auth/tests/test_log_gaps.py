"""A chosen event deleted from AUTH without an erasure: auth refuses to rebuild without it.

Storage's NATS user may delete events from AUTH (erasure), so a stolen storage credential could
delete an AccountDisabled and have the account enabled again at auth's next start. The deletion
leaves a version gap on the account's subject that no AccountErased explains; a restarted auth
records it on the audit chain and refuses to start (it never serves). Real nats-server with the
platform's users, every service of the stack.
"""

from __future__ import annotations

import pytest
from parley.auth.v1 import auth_pb2, auth_pb2_grpc

from parley_auth.log_gaps import SubjectVersions
from parley_core.runner import RefusedToStart
from parley_core.topology import user_subject
from parley_testing.nats import NatsTestServer
from parley_testing.security import audit_records
from parley_testing.stack import TIMEOUT_S, Stack, start_service


async def test_an_event_deleted_from_an_account_without_an_erasure_stops_auth_at_restart(
    stack: Stack, nats_server: NatsTestServer
) -> None:
    platform = auth_pb2_grpc.AuthServiceStub(stack.internal("auth", identity="platform"))
    victim = await stack.create_user("victim", "member")
    disable = auth_pb2.SetAccountDisabledRequest(user_id=victim.user_id, disabled=True, reason="left")
    await platform.SetAccountDisabled(disable, timeout=TIMEOUT_S)
    js = (await nats_server.connect("platform")).jetstream()
    disabled_seq = (await js.get_last_msg("AUTH", user_subject(victim.user_id))).seq
    await platform.AssignRole(auth_pb2.AssignRoleRequest(user_id=victim.user_id, role="guest"), timeout=TIMEOUT_S)

    # Only auth's own NATS user may delete from AUTH now (storage asks, auth checks): a stolen
    # auth credential deletes what it likes, and the gap it leaves is found at the next start.
    stolen = (await nats_server.connect("auth")).jetstream()
    assert await stolen.delete_msg("AUTH", disabled_seq)

    with pytest.raises(RefusedToStart, match="no erasure to explain them"):
        await start_service(stack, nats_server, "auth", registration="open")
    records = [s.record for s in await audit_records(nats_server, timeout=TIMEOUT_S) if s.record is not None]
    gaps = [r for r in records if r.kind == "event_log_gap"]
    assert len(gaps) == 1
    assert user_subject(victim.user_id) in gaps[0].detail


def test_an_erased_accounts_gaps_are_explained_and_others_are_not() -> None:
    versions = SubjectVersions()
    for version in (1, 3):
        versions.see(user_subject("erased"), version, "erased")
        versions.see(user_subject("kept"), version, "kept")
    versions.see("parley.auth.session.s1", 2, "kept")  # its SessionStarted deleted
    versions.see("parley.auth.lockout.k", 9, "")  # not an account's or session's subject
    versions.erased("erased")

    assert [(g.subject, g.after_version, g.found_version) for g in versions.unexplained()] == [
        (user_subject("kept"), 1, 3),
        ("parley.auth.session.s1", 0, 2),
    ]
