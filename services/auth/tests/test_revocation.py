"""Revocation reaches every service: a withdrawn permission, a disabled account and a revoked
session are refused at messaging (and storage) on the next call, from their own projections.

The propagation delay is measured (event sealed by auth -> applied by messaging's projection)
and printed; it is a figure for the report, not an assertion.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable

import grpc
import pytest
from parley.auth.v1 import auth_pb2, auth_pb2_grpc
from parley.gateway.v1 import gateway_pb2
from parley.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from parley.storage.v1 import storage_pb2, storage_pb2_grpc

from parley_testing.stack import TIMEOUT_S, Stack, bearer
from parley_testing.statuses import status_code
from parley_testing.waiting import eventually, until

pytestmark = pytest.mark.asyncio

ROUNDS = 20


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    # A fine interval: the propagation delay is measured through this wait.
    await until(condition, what, TIMEOUT_S, interval=0.001)


async def test_revoked_permission_is_refused_at_messaging_and_storage_with_measured_delay(stack: Stack) -> None:
    owner = await stack.create_user("olivia", "owner")
    alice = await stack.create_user("alice", "member")
    owner_login = await stack.login("olivia")
    alice_login = await stack.login("alice")
    messaging = messaging_pb2_grpc.MessagingServiceStub(stack.internal("messaging"))
    storage = storage_pb2_grpc.StorageServiceStub(stack.internal("storage"))
    admin = auth_pb2_grpc.AuthServiceStub(stack.internal("auth"))
    alice_md = bearer(alice_login.access_token)
    channel = await messaging.CreateChannel(
        messaging_pb2.CreateChannelRequest(name="general"), metadata=alice_md, timeout=TIMEOUT_S
    )
    history = storage_pb2.GetChannelHistoryRequest(channel_id=channel.channel_id)

    # Storage checks membership from its archive, which trails the channel's creation.
    async def creator_reads() -> bool | None:
        reply = storage.GetChannelHistory(history, metadata=alice_md, timeout=TIMEOUT_S)
        return await status_code(reply) == grpc.StatusCode.OK or None

    await eventually(creator_reads, "storage to let the channel's creator read its history", TIMEOUT_S)
    assert owner.role == "owner"

    delays: list[float] = []
    first_call_after: list[float] = []
    for round_no in range(ROUNDS):
        role = "operator" if round_no % 2 == 0 else "member"
        await admin.AssignRole(
            auth_pb2.AssignRoleRequest(user_id=alice.user_id, role=role),
            metadata=bearer(owner_login.access_token),
            timeout=TIMEOUT_S,
        )
        returned = time.perf_counter()
        await wait_for(lambda role=role: stack.access("messaging").role_of(alice.user_id) == role, "messaging")
        delays.append(stack.access("messaging").last_delay_s)
        listing = messaging.ListMyChannels(messaging_pb2.ListMyChannelsRequest(), metadata=alice_md, timeout=TIMEOUT_S)
        expected = grpc.StatusCode.PERMISSION_DENIED if role == "operator" else grpc.StatusCode.OK
        assert await status_code(listing) == expected
        first_call_after.append(time.perf_counter() - returned)
        if role == "operator":
            # An operator cannot read messages: storage refuses from its own projection too.
            await wait_for(lambda: stack.access("storage").role_of(alice.user_id) == "operator", "storage")
            refused = storage.GetChannelHistory(history, metadata=alice_md, timeout=TIMEOUT_S)
            assert await status_code(refused) == grpc.StatusCode.PERMISSION_DENIED

    delays.sort()
    print(
        f"\n[propagation] RoleAssigned sealed by auth -> applied by messaging's projection, {ROUNDS} rounds: "
        f"median {statistics.median(delays) * 1000:.2f} ms, max {delays[-1] * 1000:.2f} ms; "
        f"AssignRole returned -> next messaging call answered: median "
        f"{statistics.median(first_call_after) * 1000:.2f} ms"
    )


async def test_disabled_account_and_revoked_session_are_refused_at_messaging(stack: Stack) -> None:
    await stack.create_user("olivia", "owner")
    bob = await stack.create_user("bob", "member")
    owner_md = bearer((await stack.login("olivia")).access_token)
    first = await stack.login("bob")
    second = await stack.login("bob")
    messaging = messaging_pb2_grpc.MessagingServiceStub(stack.internal("messaging"))
    gateway = stack.gateway()

    def list_as(token: str) -> object:
        return messaging.ListMyChannels(
            messaging_pb2.ListMyChannelsRequest(), metadata=bearer(token), timeout=TIMEOUT_S
        )

    assert await status_code(list_as(first.access_token)) == grpc.StatusCode.OK

    # The user revokes their first session from the second one.
    await gateway.RevokeSession(
        auth_pb2.RevokeSessionRequest(session_id=first.session_id),
        metadata=bearer(second.access_token),
        timeout=TIMEOUT_S,
    )
    await wait_for(lambda: stack.access("messaging").is_revoked(first.session_id), "session revocation")
    assert await status_code(list_as(first.access_token)) == grpc.StatusCode.UNAUTHENTICATED
    assert await status_code(list_as(second.access_token)) == grpc.StatusCode.OK
    refresh_revoked = gateway.Refresh(auth_pb2.RefreshRequest(refresh_token=first.refresh_token), timeout=TIMEOUT_S)
    assert await status_code(refresh_revoked) == grpc.StatusCode.UNAUTHENTICATED

    # An admin disables the account: every token and refresh token of it stops working.
    await gateway.SetAccountDisabled(
        auth_pb2.SetAccountDisabledRequest(user_id=bob.user_id, disabled=True, reason="left the company"),
        metadata=owner_md,
        timeout=TIMEOUT_S,
    )
    await wait_for(lambda: stack.access("messaging").is_disabled(bob.user_id), "disable")
    assert await status_code(list_as(second.access_token)) == grpc.StatusCode.UNAUTHENTICATED
    refresh = gateway.Refresh(auth_pb2.RefreshRequest(refresh_token=second.refresh_token), timeout=TIMEOUT_S)
    assert await status_code(refresh) == grpc.StatusCode.UNAUTHENTICATED
    assert await status_code(stack.login("bob")) == grpc.StatusCode.UNAUTHENTICATED

    # Re-enabled: the same session works again, and a new login does.
    await gateway.SetAccountDisabled(
        auth_pb2.SetAccountDisabledRequest(user_id=bob.user_id, disabled=False), metadata=owner_md, timeout=TIMEOUT_S
    )
    await wait_for(lambda: not stack.access("messaging").is_disabled(bob.user_id), "re-enable")
    assert await status_code(list_as(second.access_token)) == grpc.StatusCode.OK
    assert await status_code(stack.login("bob")) == grpc.StatusCode.OK


async def test_logout_revokes_the_session_everywhere(stack: Stack) -> None:
    await stack.create_user("carol", "member")
    login = await stack.login("carol")
    gateway = stack.gateway()
    await gateway.Logout(auth_pb2.LogoutRequest(), metadata=bearer(login.access_token), timeout=TIMEOUT_S)
    await wait_for(lambda: stack.access("gateway").is_revoked(login.session_id), "logout at the gateway")
    after = gateway.ListMyChannels(
        messaging_pb2.ListMyChannelsRequest(), metadata=bearer(login.access_token), timeout=TIMEOUT_S
    )
    assert await status_code(after) == grpc.StatusCode.UNAUTHENTICATED


async def test_a_live_stream_ends_when_its_session_is_revoked(stack: Stack) -> None:
    await stack.create_user("dora", "member")
    login = await stack.login("dora")
    other = await stack.login("dora")
    gateway = stack.gateway()
    md = bearer(login.access_token)
    channel = await gateway.CreateChannel(
        messaging_pb2.CreateChannelRequest(name="live"), metadata=md, timeout=TIMEOUT_S
    )
    stream = gateway.Subscribe(gateway_pb2.SubscribeRequest(channel_ids=[channel.channel_id]), metadata=md)
    first = await asyncio.wait_for(stream.read(), TIMEOUT_S)
    assert first.HasField("ready")
    sent = messaging_pb2.PostMessageRequest(channel_id=channel.channel_id, body="before", idempotency_key="k1")
    await gateway.SendMessage(sent, metadata=md, timeout=TIMEOUT_S)
    assert (await asyncio.wait_for(stream.read(), TIMEOUT_S)).message.body == "before"

    await gateway.RevokeSession(
        auth_pb2.RevokeSessionRequest(session_id=login.session_id),
        metadata=bearer(other.access_token),
        timeout=TIMEOUT_S,
    )
    revoked = time.perf_counter()
    try:
        leftover = await asyncio.wait_for(stream.read(), TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
    else:
        raise AssertionError(f"the stream went on after revocation: {leftover}")
    assert code == grpc.StatusCode.UNAUTHENTICATED
    print(f"\n[live stream] ended {(time.perf_counter() - revoked) * 1000:.1f} ms after RevokeSession returned")


async def test_a_live_stream_ended_by_a_withdrawn_permission_says_who_holds_it(stack: Stack) -> None:
    account = await stack.create_user("ivo", "member")
    md = bearer((await stack.login("ivo")).access_token)
    gateway = stack.gateway()
    channel = await gateway.CreateChannel(
        messaging_pb2.CreateChannelRequest(name="ivo"), metadata=md, timeout=TIMEOUT_S
    )
    stream = gateway.Subscribe(gateway_pb2.SubscribeRequest(channel_ids=[channel.channel_id]), metadata=md)
    assert (await asyncio.wait_for(stream.read(), TIMEOUT_S)).HasField("ready")

    platform = auth_pb2_grpc.AuthServiceStub(stack.internal("auth", identity="platform"))
    await platform.AssignRole(
        auth_pb2.AssignRoleRequest(user_id=account.user_id, role="security-auditor"), timeout=TIMEOUT_S
    )
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await asyncio.wait_for(stream.read(), TIMEOUT_S)
    assert ended.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert ended.value.details() == (
        "reading the live stream (Subscribe) needs the messages.read permission, "
        "held by owner, admin, member and guest; you are security-auditor"
    )
