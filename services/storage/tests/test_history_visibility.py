"""Storage enforces hide-history-before-join itself: a caller reaching it past the gateway
(any internal peer allowed to call it) still gets nothing from before the member joined."""

from __future__ import annotations

import uuid

from parley.messaging.v1 import messaging_pb2
from parley.storage.v1 import storage_pb2, storage_pb2_grpc

from parley_testing.stack import TIMEOUT_S, Stack, bearer
from parley_testing.waiting import eventually


async def test_storage_hides_messages_from_before_the_join(stack: Stack) -> None:
    await stack.create_user("alice", "member")
    await stack.create_user("bob", "member")
    alice = bearer((await stack.login("alice")).access_token)
    bob = bearer((await stack.login("bob")).access_token)
    gateway = stack.gateway()
    channel = await gateway.CreateChannel(
        messaging_pb2.CreateChannelRequest(name="quiet", hide_history_before_join=True), metadata=alice
    )

    async def send(text: str) -> None:
        request = messaging_pb2.PostMessageRequest(
            channel_id=channel.channel_id, body=text, idempotency_key=uuid.uuid4().hex
        )
        await gateway.SendMessage(request, metadata=alice, timeout=TIMEOUT_S)

    await send("before bob")
    await gateway.JoinChannel(messaging_pb2.JoinChannelRequest(channel_id=channel.channel_id), metadata=bob)
    await send("after bob")

    storage = storage_pb2_grpc.StorageServiceStub(stack.internal("storage"))

    async def bodies(token: tuple[tuple[str, str]], **page: int) -> list[str]:
        request = storage_pb2.GetChannelHistoryRequest(channel_id=channel.channel_id, limit=10, **page)
        response = await storage.GetChannelHistory(request, metadata=token, timeout=TIMEOUT_S)
        return [m.body for m in response.messages]

    async def both_archived() -> list[str] | None:
        found = await bodies(alice)
        return found if len(found) == 2 else None

    assert await eventually(both_archived, "both messages in the archive") == ["before bob", "after bob"]
    assert await bodies(bob) == ["after bob"]
    assert await bodies(bob, before_seq=2) == []  # paging backwards does not reach behind the join
    assert await bodies(bob, after_seq=0, before_seq=3) == ["after bob"]
