"""Clients' sends that wait while the gateway's call to messaging is in flight go together in one
PostMessages call, and each client still gets its own answer: one send's refusal fails no other.

Every service runs in-process (the `stack` composition) on a real nats-server, over real gRPC.
"""

from __future__ import annotations

import asyncio
import uuid
from functools import partial
from typing import Any

import grpc
import pytest
from parley.gateway.v1 import gateway_pb2_grpc
from parley.messaging.v1 import messaging_pb2

from parley_core.event_log import EventLog
from parley_testing.stack import TIMEOUT_S, Stack, bearer

SENDS_EACH = 12
Metadata = tuple[tuple[str, str], ...]


async def send_to(
    gateway: gateway_pb2_grpc.GatewayAsyncStub, cid: str, metadata: Metadata, body: str
) -> messaging_pb2.ChatMessage | grpc.aio.AioRpcError:
    """One client's send through the gateway: its answer, or its refusal."""
    request = messaging_pb2.PostMessageRequest(channel_id=cid, body=body, idempotency_key=uuid.uuid4().hex)
    try:
        return await gateway.SendMessage(request, metadata=metadata, timeout=TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        return exc


async def owner_and_other(
    stack: Stack, owner: str, other: str, channel: str
) -> tuple[gateway_pb2_grpc.GatewayAsyncStub, str, Metadata, Metadata]:
    """Two new members logged in, and a new channel of `owner`'s: the gateway, the channel's id,
    and each one's call metadata."""
    await stack.create_user(owner, "member")
    await stack.create_user(other, "member")
    owner_md = bearer((await stack.login(owner)).access_token)
    other_md = bearer((await stack.login(other)).access_token)
    gateway = stack.gateway()
    request = messaging_pb2.CreateChannelRequest(name=channel)
    cid = (await gateway.CreateChannel(request, metadata=owner_md, timeout=TIMEOUT_S)).channel_id
    return gateway, cid, owner_md, other_md


async def test_concurrent_sends_go_together_and_each_client_gets_its_own_answer(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    turns: list[int] = []  # sends per turn of the channel's lock
    decided_together = EventLog.decide_and_append_each

    async def counted(log: EventLog, subject: str, read: Any, each: Any, **options: Any) -> Any:
        turns.append(len(each))
        return await decided_together(log, subject, read, each, **options)

    monkeypatch.setattr(EventLog, "decide_and_append_each", counted)
    gateway, cid, mira, otto = await owner_and_other(stack, "mira", "otto", "together")  # otto: not in it

    send = partial(send_to, gateway, cid)
    sends = [(mira, f"mira {n}") for n in range(SENDS_EACH)] + [(otto, f"otto {n}") for n in range(SENDS_EACH)]
    sends += [(mira, " ")] * 2  # an empty body
    answers = await asyncio.gather(*(send(metadata, body) for metadata, body in sends))

    landed = [a for a in answers[:SENDS_EACH] if isinstance(a, messaging_pb2.ChatMessage)]
    assert [a.body for a in landed] == [f"mira {n}" for n in range(SENDS_EACH)]
    assert sorted(a.channel_seq for a in landed) == list(range(1, SENDS_EACH + 1))
    for refused in answers[SENDS_EACH : 2 * SENDS_EACH]:
        assert isinstance(refused, grpc.aio.AioRpcError)
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
        assert refused.details() == "you are not a member of this channel; join it first"
    for empty in answers[2 * SENDS_EACH :]:
        assert isinstance(empty, grpc.aio.AioRpcError)
        assert (empty.code(), empty.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "message body is empty")
    assert max(turns) > 1, "sends waiting at the gateway were decided together"
    assert stack.app("messaging").channels.get(cid).last_seq == SENDS_EACH


async def test_a_send_carrying_two_tokens_is_refused_alone_or_batched(stack: Stack) -> None:
    """The gateway checks and rate-limits one token: a call carrying a second `authorization`
    header is refused, whether it goes alone or waits in a batch, and posts as no one."""
    gateway, cid, lena, omar = await owner_and_other(stack, "lena", "omar", "one-token")
    await gateway.JoinChannel(messaging_pb2.JoinChannelRequest(channel_id=cid), metadata=omar, timeout=TIMEOUT_S)

    send = partial(send_to, gateway, cid)
    alone = await send(lena + omar, "alone")
    sends = [(lena, f"lena {n}") for n in range(SENDS_EACH)] + [(lena + omar, f"two {n}") for n in range(SENDS_EACH)]
    answers = [alone, *await asyncio.gather(*(send(metadata, body) for metadata, body in sends))]

    two_tokens = [alone, *answers[1 + SENDS_EACH :]]
    for refused in two_tokens:
        assert isinstance(refused, grpc.aio.AioRpcError)
        assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "send exactly one Bearer token" in (refused.details() or "")
    stored = stack.app("messaging").channels.get(cid)
    assert sorted(r.current.body for r in stored.messages.values()) == sorted(f"lena {n}" for n in range(SENDS_EACH))
