"""A send whose append the event log did not confirm is named, retried with its key, never doubled.

Every service runs in-process (the `stack` composition) on a real TLS nats-server, which the
tests freeze (SIGSTOP: it takes the publish but does not answer) or kill and start again.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from parley.messaging.v1 import messaging_pb2

from parley_client import OutcomeUnknown, ParleyClient
from parley_core.errors import OUTCOME_METADATA, OUTCOME_UNKNOWN
from parley_core.pki import Pki
from parley_testing.nats import NatsTestServer
from parley_testing.stack import PASSWORD, TIMEOUT_S, Stack, bearer
from parley_testing.waiting import until

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def client(stack: Stack, pki: Pki) -> AsyncIterator[ParleyClient]:
    client = ParleyClient.connect(f"127.0.0.1:{stack.ports['gateway']}", ca_cert=pki.ca_pem())
    name = f"amb-{uuid.uuid4().hex[:8]}"
    await client.register(name, PASSWORD)
    await client.login(name, PASSWORD)
    try:
        yield client
    finally:
        await client.close()


async def stored_messages(client: ParleyClient, channel_id: str) -> int:
    [channel] = [c for c in await client.my_channels() if c.channel_id == channel_id]
    return channel.last_seq


async def test_a_send_the_event_log_did_not_answer_is_unavailable_with_the_outcome_unknown_never_doubled(
    stack: Stack, client: ParleyClient, nats_server: NatsTestServer
) -> None:
    channel_id = (await client.create_channel("ambiguous")).channel_id
    assert client.access_token is not None
    request = messaging_pb2.PostMessageRequest(channel_id=channel_id, body="maybe", idempotency_key="key-1")
    async with nats_server.frozen():
        with pytest.raises(grpc.aio.AioRpcError) as raw:
            await stack.gateway().SendMessage(request, metadata=bearer(client.access_token), timeout=2.0)
        # The SDK sends it again with the same key until its deadline, then says what it knows.
        with pytest.raises(OutcomeUnknown) as sdk:
            await client.send(channel_id, "maybe", idempotency_key="key-1", timeout=2.0)

    assert raw.value.code() == grpc.StatusCode.UNAVAILABLE  # never INTERNAL
    assert "same idempotency key" in (raw.value.details() or "")
    assert (OUTCOME_METADATA, OUTCOME_UNKNOWN) in tuple(raw.value.trailing_metadata() or ())
    assert sdk.value.idempotency_key == "key-1"
    assert "key-1" in sdk.value.message
    # The frozen broker stored the first publish once it ran again; the same key finds it.
    sent = await client.send(channel_id, "maybe", idempotency_key="key-1")
    assert sent.channel_seq == 1
    assert await stored_messages(client, channel_id) == 1


async def test_a_send_made_once_while_the_broker_restarts_is_acknowledged_once(
    stack: Stack, client: ParleyClient, nats_server: NatsTestServer
) -> None:
    channel_id = (await client.create_channel("restart")).channel_id
    messaging_nats = stack.apps["messaging"].ctx.bus.nc
    nats_server.process.kill()
    await until(lambda: not messaging_nats.is_connected, what="messaging to notice the broker is gone")

    pending = asyncio.create_task(client.send(channel_id, "through the outage"))
    await nats_server.process.restart()
    sent = await asyncio.wait_for(pending, TIMEOUT_S * 2)

    assert sent.body == "through the outage"
    assert await stored_messages(client, channel_id) == 1


async def test_a_channel_created_again_with_its_key_is_the_first_one(
    client: ParleyClient, nats_server: NatsTestServer
) -> None:
    async with nats_server.frozen():
        with pytest.raises(OutcomeUnknown) as unknown:
            await client.create_channel("made-once", timeout=2.0)

    key = unknown.value.idempotency_key
    again = await client.create_channel("made-once", idempotency_key=key)
    also = await client.create_channel("made-once", idempotency_key=key)

    assert also.channel_id == again.channel_id
    assert [c.channel_id for c in await client.my_channels() if c.name == "made-once"] == [again.channel_id]
    other = await client.create_channel("made-once")  # no key: a channel of its own, as before
    assert other.channel_id != again.channel_id
