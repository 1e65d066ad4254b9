"""Two messaging instances writing one channel at once keep its total order and idempotency.

Each instance applies its own acknowledged appends at once (Replay.apply_own) and learns the
other's through its replay; the stream's expected subject sequence settles every race between
them. Real nats-server, real gRPC over mutual TLS, the whole stack in-process.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import pytest
from nats.aio.msg import Msg
from parley.gateway.v1 import gateway_pb2_grpc
from parley.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from parley.messaging.v1.events_pb2 import MessagePosted

from parley_core.bus import Replay
from parley_core.envelope import decode, open_payload
from parley_core.event_log import EventLog
from parley_core.grpc_channel import secure_channel
from parley_core.topology import channel_subject
from parley_messaging.service import MessagingApp
from parley_testing.nats import NatsTestServer
from parley_testing.stack import TIMEOUT_S, Stack, bearer, start_service
from parley_testing.waiting import until

SENDERS_PER_INSTANCE = 4
SENDS_PER_SENDER = 15
SLOW_REPLAY_S = 0.3


async def test_concurrent_sends_through_two_instances_keep_order_and_idempotency(
    stack: Stack, nats_server: NatsTestServer
) -> None:
    await stack.create_user("alice", "member")
    token = bearer((await stack.login("alice")).access_token)
    second = await start_service(stack, nats_server, "messaging", registration="open")
    try:
        first_stub = messaging_pb2_grpc.MessagingServiceStub(stack.internal("messaging"))
        channel = secure_channel(stack.pki, identity="gateway", address=f"127.0.0.1:{second.port}", peer="messaging")
        stack.channels.append(channel)
        second_stub = messaging_pb2_grpc.MessagingServiceStub(channel)
        stubs = (first_stub, second_stub)
        created = await first_stub.CreateChannel(
            messaging_pb2.CreateChannelRequest(name="busy"), metadata=token, timeout=TIMEOUT_S
        )
        cid = created.channel_id

        acknowledged: dict[str, messaging_pb2.ChatMessage] = {}

        async def sender(instance: int, n: int) -> None:
            for i in range(SENDS_PER_SENDER):
                key = uuid.uuid4().hex
                request = messaging_pb2.PostMessageRequest(
                    channel_id=cid, body=f"{instance}-{n}-{i}", idempotency_key=key
                )
                sent = await stubs[instance].PostMessage(request, metadata=token, timeout=TIMEOUT_S)
                # The same send retried through the other instance: the first result stands.
                retried = await stubs[1 - instance].PostMessage(request, metadata=token, timeout=TIMEOUT_S)
                assert (retried.channel_seq, retried.message_id) == (sent.channel_seq, sent.message_id)
                acknowledged[key] = sent

        await asyncio.gather(*(sender(k, n) for k in (0, 1) for n in range(SENDERS_PER_INSTANCE)))

        total = 2 * SENDERS_PER_INSTANCE * SENDS_PER_SENDER
        assert sorted(m.channel_seq for m in acknowledged.values()) == list(range(1, total + 1))
        assert len({m.message_id for m in acknowledged.values()}) == total

        # The stream holds the posts in channel order, each once.
        js = stack.app("messaging").ctx.bus.js
        numbers: list[int] = []
        for seq in range(1, (await js.stream_info("MSG")).state.last_seq + 1):
            raw = await js.get_msg("MSG", seq=seq)
            if raw.subject == channel_subject(cid):
                payload = open_payload(decode(raw.data or b""))
                if isinstance(payload, MessagePosted):
                    numbers.append(payload.channel_seq)
        assert numbers == list(range(1, total + 1))

        # Both projections end the same: every post once, numbered as acknowledged.
        apps: list[MessagingApp] = [stack.app("messaging"), second.app.app]
        for app in apps:
            await until(lambda app=app: app.channels.get(cid).last_seq == total, "both instances to see every post")
        for app in apps:
            projected = app.channels.get(cid)
            numbered = {seq: r.current.message_id for seq, r in projected.messages.items()}
            assert numbered == {m.channel_seq: m.message_id for m in acknowledged.values()}
    finally:
        await second.shutdown()


async def test_sends_batched_through_two_gateways_to_two_instances_keep_order_and_idempotency(
    stack: Stack, nats_server: NatsTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each gateway sends the sends that wait while its call is in flight as one PostMessages
    call to its own messaging instance; every send is also retried at the same moment through the
    other gateway (the same key): one message each, numbered without a gap."""
    await stack.create_user("gwen", "member")
    token = bearer((await stack.login("gwen")).access_token)
    turns: list[int] = []  # commands per turn of a channel's lock, on either instance
    decided_together = EventLog.decide_and_append_each

    async def counted(log: EventLog, subject: str, read: Any, each: Any, **options: Any) -> Any:
        turns.append(len(each))
        return await decided_together(log, subject, read, each, **options)

    monkeypatch.setattr(EventLog, "decide_and_append_each", counted)
    second = await start_service(stack, nats_server, "messaging", registration="open")
    first_port, stack.ports["messaging"] = stack.ports["messaging"], second.port
    try:  # a second gateway, whose messaging is the second instance
        second_gateway = await start_service(stack, nats_server, "gateway", registration="open")
    except BaseException:
        await second.shutdown()
        raise
    finally:
        stack.ports["messaging"] = first_port
    try:
        channel = grpc.aio.secure_channel(
            f"127.0.0.1:{second_gateway.port}",
            grpc.ssl_channel_credentials(root_certificates=stack.pki.ca_pem()),
            options=[("grpc.ssl_target_name_override", "gateway")],
        )
        stack.channels.append(channel)
        gateways = (stack.gateway(), gateway_pb2_grpc.GatewayStub(channel))
        created = await gateways[0].CreateChannel(
            messaging_pb2.CreateChannelRequest(name="batched"), metadata=token, timeout=TIMEOUT_S
        )
        cid = created.channel_id
        acknowledged: dict[str, messaging_pb2.ChatMessage] = {}

        async def sender(gateway: int, n: int) -> None:
            for i in range(SENDS_PER_SENDER):
                request = messaging_pb2.PostMessageRequest(
                    channel_id=cid, body=f"{gateway}-{n}-{i}", idempotency_key=uuid.uuid4().hex
                )
                sent, retried = await asyncio.gather(
                    gateways[gateway].SendMessage(request, metadata=token, timeout=TIMEOUT_S),
                    gateways[1 - gateway].SendMessage(request, metadata=token, timeout=TIMEOUT_S),
                )
                assert (retried.channel_seq, retried.message_id) == (sent.channel_seq, sent.message_id)
                acknowledged[request.idempotency_key] = sent

        await asyncio.gather(*(sender(g, n) for g in (0, 1) for n in range(SENDERS_PER_INSTANCE)))

        total = 2 * SENDERS_PER_INSTANCE * SENDS_PER_SENDER
        assert sorted(m.channel_seq for m in acknowledged.values()) == list(range(1, total + 1))
        assert len({m.message_id for m in acknowledged.values()}) == total
        assert max(turns) > 1, "sends waiting at a gateway were decided together"
        apps: list[MessagingApp] = [stack.app("messaging"), second.app.app]
        for app in apps:
            await until(lambda app=app: app.channels.get(cid).last_seq == total, "both instances to see every post")
            numbered = {seq: r.current.message_id for seq, r in app.channels.get(cid).messages.items()}
            assert numbered == {m.channel_seq: m.message_id for m in acknowledged.values()}
    finally:
        await second_gateway.shutdown()
        await second.shutdown()


async def test_a_channel_created_through_one_instance_is_found_at_once_by_the_other(
    stack: Stack, nats_server: NatsTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client's next call after creating a channel may reach the other instance before that
    instance's replay applied the creation (a loaded host): it reads the channel from the log,
    never NOT_FOUND. The second instance's replay of MSG is made to run behind."""
    await stack.create_user("bea", "member")
    token = bearer((await stack.login("bea")).access_token)
    running_replays = {id(r) for r in stack.app("messaging").ctx.bus._subscriptions}
    delivered_at_once = Replay._on_msg

    async def behind(replay: Replay, msg: Msg) -> None:
        if replay.stream == "MSG" and id(replay) not in running_replays:
            await asyncio.sleep(SLOW_REPLAY_S)  # a replay behind by this much, not a wait for a result
        await delivered_at_once(replay, msg)

    monkeypatch.setattr(Replay, "_on_msg", behind)
    second = await start_service(stack, nats_server, "messaging", registration="open")
    first_stub = messaging_pb2_grpc.MessagingServiceStub(stack.internal("messaging"))
    channel = secure_channel(stack.pki, identity="gateway", address=f"127.0.0.1:{second.port}", peer="messaging")
    stack.channels.append(channel)
    second_stub = messaging_pb2_grpc.MessagingServiceStub(channel)
    try:
        for n in range(5):
            created = await first_stub.CreateChannel(
                messaging_pb2.CreateChannelRequest(name=f"fresh-{n}"), metadata=token, timeout=TIMEOUT_S
            )
            request = messaging_pb2.PostMessageRequest(
                channel_id=created.channel_id, body="first", idempotency_key=uuid.uuid4().hex
            )
            posted = await second_stub.PostMessage(request, metadata=token, timeout=TIMEOUT_S)
            assert posted.channel_seq == 1
        # An id that is no channel is still NOT_FOUND, and one shaped like a wildcard never reaches the log.
        for missing in ("0" * 32, "*", ">"):
            request = messaging_pb2.PostMessageRequest(channel_id=missing, body="x", idempotency_key=uuid.uuid4().hex)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await second_stub.PostMessage(request, metadata=token, timeout=TIMEOUT_S)
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await second.shutdown()
