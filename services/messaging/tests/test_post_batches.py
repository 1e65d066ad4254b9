"""PostMessages, the gateway's waiting sends in one call: each item is checked from its own token
and answered on its own, a channel's items land in order, and the gateway's certificate alone
posts as no one. Real nats-server, real gRPC over mutual TLS, the whole stack in-process.
"""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from parley.auth.v1 import auth_pb2
from parley.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from parley.messaging.v1.messaging_pb2_grpc import MessagingServiceStub as MessagingStub

from parley_core import deadline, telemetry
from parley_core.post_batch_limits import POST_BATCH_MAX_BYTES, POST_BATCH_MAX_ITEMS
from parley_core.topology import PLATFORM_USER
from parley_core.trace_hops import TRACEPARENT
from parley_messaging.post_batches import ItemScope
from parley_testing.stack import TIMEOUT_S, Stack
from parley_testing.waiting import until


def item(channel_id: str, body: str, authorization: str, key: str | None = None) -> messaging_pb2.PostItem:
    request = messaging_pb2.PostMessageRequest(
        channel_id=channel_id, body=body, idempotency_key=key or uuid.uuid4().hex
    )
    return messaging_pb2.PostItem(request=request, authorization=authorization, timeout_ms=int(TIMEOUT_S * 1000))


async def member_with_a_channel(stack: Stack, user: str, channel: str) -> tuple[str, MessagingStub, str]:
    """A new member's authorization, a stub to messaging with the gateway's certificate, and a
    channel the member created there."""
    await stack.create_user(user, "member")
    authorization = f"Bearer {(await stack.login(user)).access_token}"
    messaging = messaging_pb2_grpc.MessagingServiceStub(stack.internal("messaging"))
    created = await messaging.CreateChannel(
        messaging_pb2.CreateChannelRequest(name=channel),
        metadata=(("authorization", authorization),),
        timeout=TIMEOUT_S,
    )
    return authorization, messaging, created.channel_id


def status(outcome: messaging_pb2.PostOutcome) -> grpc.StatusCode:
    return next(code for code in grpc.StatusCode if code.value[0] == outcome.code)


async def test_each_item_of_a_batch_is_checked_from_its_own_token_and_answered_on_its_own(stack: Stack) -> None:
    await stack.create_user("alma", "member")
    await stack.create_user("boris", "member")  # no member of alma's channel
    await stack.create_user("audra", "security-auditor")  # no messages.send
    alma = f"Bearer {(await stack.login('alma')).access_token}"
    boris = f"Bearer {(await stack.login('boris')).access_token}"
    audra = f"Bearer {(await stack.login('audra')).access_token}"
    messaging = messaging_pb2_grpc.MessagingServiceStub(stack.internal("messaging"))
    created = await messaging.CreateChannel(
        messaging_pb2.CreateChannelRequest(name="batched"), metadata=(("authorization", alma),), timeout=TIMEOUT_S
    )
    cid = created.channel_id

    items = [
        item(cid, "one", alma, key="k1"),
        item(cid, "forged", "Bearer not-a-token"),
        item(cid, "anonymous", ""),  # the gateway's certificate alone
        item(cid, "foreign", boris),
        item(cid, "unpermitted", audra),
        item(cid, "", alma),
        item("0" * 32, "nowhere", alma),
        item(cid, "two", alma, key="k2"),
        item(cid, "one", alma, key="k1"),  # a retry in the same batch: the first stands
    ]
    response = await messaging.PostMessages(messaging_pb2.PostMessagesRequest(items=items), timeout=TIMEOUT_S)
    outcomes = list(response.outcomes)

    assert [status(o) for o in outcomes] == [
        grpc.StatusCode.OK,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.OK,
        grpc.StatusCode.OK,
    ]
    assert "not a member of this channel" in outcomes[3].details
    assert "messages.send" in outcomes[4].details
    first, second, retried = outcomes[0].message, outcomes[7].message, outcomes[8].message
    assert (first.channel_seq, second.channel_seq) == (1, 2)
    assert (retried.channel_seq, retried.message_id) == (first.channel_seq, first.message_id)
    assert not any(o.outcome_unknown for o in outcomes)

    # Only alma's two posts were stored, as hers.
    stored = stack.app("messaging").channels.get(cid)
    assert stored.last_seq == 2
    assert [(r.current.body, r.current.sender_id) for _, r in sorted(stored.messages.items())] == [
        ("one", first.sender_id),
        ("two", first.sender_id),
    ]
    assert first.sender_name == "alma"


@pytest.mark.parametrize("identity", ["storage", "auth", PLATFORM_USER])
async def test_only_the_gateway_sends_its_clients_posts_together(stack: Stack, identity: str) -> None:
    """Refused by the interceptor that checks every caller (topology.GRPC_METHOD_CALLERS), naming
    who called and who may, before any item is read."""
    cato, _, cid = await member_with_a_channel(stack, "cato", "mine")
    other = messaging_pb2_grpc.MessagingServiceStub(stack.internal("messaging", identity=identity))
    request = messaging_pb2.PostMessagesRequest(items=[item(cid, "through another door", cato)])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await other.PostMessages(request, timeout=TIMEOUT_S)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.details() == (
        f"peer ['{identity}'] may not call /parley.messaging.v1.MessagingService/PostMessages (its callers: gateway)"
    )
    assert stack.app("messaging").channels.get(cid).last_seq == 0


async def test_an_item_of_a_revoked_session_is_refused_while_its_batch_lands(stack: Stack) -> None:
    """Each item's sender is read as of now, as any call's is: a session revoked meanwhile posts
    nothing, whoever's items travel with it."""
    await stack.create_user("dora", "member")
    first, second = await stack.login("dora"), await stack.login("dora")
    revoked, current = f"Bearer {first.access_token}", f"Bearer {second.access_token}"
    messaging = messaging_pb2_grpc.MessagingServiceStub(stack.internal("messaging"))
    cid = (
        await messaging.CreateChannel(
            messaging_pb2.CreateChannelRequest(name="revoked"),
            metadata=(("authorization", current),),
            timeout=TIMEOUT_S,
        )
    ).channel_id
    await stack.gateway().RevokeSession(
        auth_pb2.RevokeSessionRequest(session_id=first.session_id),
        metadata=(("authorization", current),),
        timeout=TIMEOUT_S,
    )
    await until(lambda: stack.access("messaging").is_revoked(first.session_id), "messaging to see the revocation")

    items = [item(cid, "before", current), item(cid, "revoked", revoked), item(cid, "after", current)]
    response = await messaging.PostMessages(messaging_pb2.PostMessagesRequest(items=items), timeout=TIMEOUT_S)

    assert [status(o) for o in response.outcomes] == [
        grpc.StatusCode.OK,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.OK,
    ]
    assert response.outcomes[1].details == "this session was revoked; log in again"
    assert [o.message.channel_seq for o in response.outcomes] == [1, 0, 2]


async def test_a_call_of_more_items_than_the_gateway_ever_sends_is_refused_whole(stack: Stack) -> None:
    """The gateway's certificate and one member's token: a call over the gateway's own cap posts
    nothing (one turn of the channel's lock would hold it for every item); the cap itself lands."""
    ezra, messaging, cid = await member_with_a_channel(stack, "ezra", "capped")

    over = [item(cid, f"flood {n}", ezra) for n in range(POST_BATCH_MAX_ITEMS + 1)]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await messaging.PostMessages(messaging_pb2.PostMessagesRequest(items=over), timeout=TIMEOUT_S)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"at most {POST_BATCH_MAX_ITEMS} items" in (refused.value.details() or "")
    assert stack.app("messaging").channels.get(cid).last_seq == 0

    full = over[:POST_BATCH_MAX_ITEMS]
    response = await messaging.PostMessages(messaging_pb2.PostMessagesRequest(items=full), timeout=TIMEOUT_S)
    assert {status(o) for o in response.outcomes} == {grpc.StatusCode.OK}
    assert stack.app("messaging").channels.get(cid).last_seq == POST_BATCH_MAX_ITEMS


async def test_a_call_of_more_bytes_than_the_gateway_ever_sends_is_refused_whole(stack: Stack) -> None:
    """Within the item cap, over the byte cap (64 sends of 4000 four-byte emoji): refused whole,
    nothing posted; the same sends within the byte cap land."""
    fern, messaging, cid = await member_with_a_channel(stack, "fern", "heavy")

    heavy = [item(cid, "\N{GRINNING FACE}" * 4000, fern) for _ in range(POST_BATCH_MAX_ITEMS)]
    over = messaging_pb2.PostMessagesRequest(items=heavy)
    assert over.ByteSize() > POST_BATCH_MAX_BYTES
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await messaging.PostMessages(over, timeout=TIMEOUT_S)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"at most {POST_BATCH_MAX_BYTES} bytes" in (refused.value.details() or "")
    assert stack.app("messaging").channels.get(cid).last_seq == 0

    within = heavy[: POST_BATCH_MAX_ITEMS // 2]
    response = await messaging.PostMessages(messaging_pb2.PostMessagesRequest(items=within), timeout=TIMEOUT_S)
    assert {status(o) for o in response.outcomes} == {grpc.StatusCode.OK}
    assert stack.app("messaging").channels.get(cid).last_seq == POST_BATCH_MAX_ITEMS // 2


@pytest.mark.parametrize("spans_recorded", [False, True], ids=["trace-hops", "opentelemetry-spans"])
async def test_an_item_decided_again_runs_in_its_own_trace_and_deadline_each_time(
    spans_recorded: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pipelined round whose chain broke decides an item again: its scope is entered again,
    with or without a trace exporter (whose span's context manager is used once)."""
    monkeypatch.setattr(telemetry, "_spans_recorded", spans_recorded)
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    scope = ItemScope(messaging_pb2.PostItem(traceparent=f"00-{trace_id}-b7ad6b7169203331-01", timeout_ms=5_000))
    for _ in range(2):
        with scope:
            assert deadline.give_up_at(60.0) < asyncio.get_running_loop().time() + 5.0
            assert telemetry.current_trace_headers()[TRACEPARENT].split("-")[1] == trace_id
        assert deadline.give_up_at(60.0) > asyncio.get_running_loop().time() + 5.0
