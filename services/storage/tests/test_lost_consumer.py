"""A lost archive consumer is noticed and made again: nothing acknowledged goes unarchived.

Every service in-process over real gRPC, a real nats-server and SQLite archive. The operator's
platform identity deletes storage's MSG consumer while a user keeps sending (no service's own
NATS user may: test_nats_permissions.py); storage turns NOT_SERVING, which `parley status`
reads through the same health service, makes the consumer again from its archive's position,
records it on STORE, and serves again once it has caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from grpc_health.v1 import health_pb2, health_pb2_grpc
from parley.auth.v1 import auth_pb2
from parley.messaging.v1 import messaging_pb2
from parley.storage.v1 import storage_pb2
from parley.storage.v1.events_pb2 import ArchiveConsumerRecreated

from parley_core.envelope import decode, open_payload
from parley_core.topology import CONSUMERS, archive_consumer_subject
from parley_testing.nats import NatsTestServer
from parley_testing.stack import PASSWORD, TIMEOUT_S, Stack, bearer
from parley_testing.waiting import eventually

SENDS = 40
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


async def test_a_deleted_archive_consumer_is_made_again_and_every_acknowledged_send_archived_once(
    stack: Stack, nats_server: NatsTestServer
) -> None:
    name = f"alice{uuid.uuid4().hex[:8]}"
    await stack.gateway().Register(auth_pb2.RegisterRequest(username=name, password=PASSWORD), timeout=TIMEOUT_S)
    token = bearer((await stack.login(name)).access_token)
    channel = await stack.gateway().CreateChannel(
        messaging_pb2.CreateChannelRequest(name="lost"), metadata=token, timeout=TIMEOUT_S
    )
    [spec] = [c for c in CONSUMERS if c.service == "storage" and c.stream == "MSG"]
    statuses: list[int] = []
    watching = asyncio.Event()

    async def watch_health() -> None:
        health = health_pb2_grpc.HealthStub(stack.internal("storage", identity="platform"))
        async for answer in health.Watch(health_pb2.HealthCheckRequest(service="")):
            statuses.append(answer.status)
            watching.set()

    watcher = asyncio.create_task(watch_health())
    await asyncio.wait_for(watching.wait(), TIMEOUT_S)
    acknowledged: list[int] = []
    sent_some = asyncio.Event()

    async def keep_sending() -> None:
        for n in range(SENDS):
            request = messaging_pb2.PostMessageRequest(
                channel_id=channel.channel_id, body=f"m{n}", idempotency_key=uuid.uuid4().hex
            )
            acknowledged.append(
                (await stack.gateway().SendMessage(request, metadata=token, timeout=TIMEOUT_S)).channel_seq
            )
            if n == SENDS // 4:
                sent_some.set()

    sender = asyncio.create_task(keep_sending())
    try:
        await asyncio.wait_for(sent_some.wait(), TIMEOUT_S)
        platform = (await nats_server.connect("platform")).jetstream()
        assert await platform.delete_consumer(spec.stream, spec.durable)
        await asyncio.wait_for(sender, TIMEOUT_S * 2)

        async def serving_again() -> bool | None:
            return True if NOT_SERVING in statuses and statuses[-1] == SERVING else None

        await eventually(serving_again, "storage NOT_SERVING, then SERVING once it caught up", TIMEOUT_S)
        assert statuses[0] == SERVING

        async def everything_in_history() -> list[messaging_pb2.ChatMessage] | None:
            request = storage_pb2.GetChannelHistoryRequest(channel_id=channel.channel_id, limit=SENDS + 10)
            found = list((await stack.gateway().GetHistory(request, metadata=token, timeout=TIMEOUT_S)).messages)
            return found if len(found) >= SENDS else None

        shown = await eventually(everything_in_history, "every acknowledged send in history", TIMEOUT_S)
        assert [m.channel_seq for m in shown] == sorted(acknowledged) == list(range(1, SENDS + 1))
        assert [m.body for m in shown] == [f"m{n}" for n in range(SENDS)]  # each once, none lost
        posted = await stack.app("storage").archive.count_events("MSG")
        assert posted == (await platform.stream_info("MSG")).state.messages  # the archive holds the log, once

        record = await platform.get_last_msg("STORE", archive_consumer_subject("MSG"))
        made_again = open_payload(decode(record.data or b""))
        assert isinstance(made_again, ArchiveConsumerRecreated)
        assert (made_again.stream, made_again.consumer) == ("MSG", spec.durable)
        info = await platform.consumer_info(spec.stream, spec.durable)
        assert info.config.opt_start_seq == made_again.resumed_from_seq
        assert 1 < made_again.resumed_from_seq <= made_again.stream_last_seq
    finally:
        sender.cancel()
        watcher.cancel()
        for task in (sender, watcher):
            with contextlib.suppress(BaseException):
                await task
