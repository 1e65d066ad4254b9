"""A write that never reached the gateway is "not sent", promptly; one that did and got no answer
stays of unknown outcome. Real gRPC: a port nothing listens on, and a server that takes the call
and then stops."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from parley.messaging.v1 import messaging_pb2

from parley_client import OutcomeUnknown, ParleyClient, ParleyError, never_sent
from parley_client.session import WRITE_TIMEOUT_S
from parley_core.net import free_port

SEND = "/parley.gateway.v1.Gateway/SendMessage"


class Unanswered:
    """A gateway whose SendMessage takes the request and never answers."""

    def __init__(self) -> None:
        self.received = asyncio.Event()

    async def send_message(self, request: messaging_pb2.PostMessageRequest, context: object) -> None:
        self.received.set()
        await asyncio.Event().wait()


@pytest_asyncio.fixture
async def silent_gateway() -> AsyncIterator[tuple[grpc.aio.Server, Unanswered, int]]:
    gateway = Unanswered()
    handler = grpc.method_handlers_generic_handler(
        "parley.gateway.v1.Gateway",
        {
            "SendMessage": grpc.unary_unary_rpc_method_handler(
                gateway.send_message,
                request_deserializer=messaging_pb2.PostMessageRequest.FromString,
                response_serializer=messaging_pb2.ChatMessage.SerializeToString,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield server, gateway, port
    finally:
        await server.stop(None)


async def test_a_send_no_gateway_took_is_not_sent_long_before_the_write_deadline() -> None:
    client = ParleyClient(grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}"))  # nothing listens there
    try:
        # Without the distinction it is retried for the whole WRITE_TIMEOUT_S, then OutcomeUnknown.
        with pytest.raises(ParleyError) as refused:
            await asyncio.wait_for(client.send("c" * 32, "hello"), WRITE_TIMEOUT_S / 2)
    finally:
        await client.close()
    assert not isinstance(refused.value, OutcomeUnknown)
    assert never_sent(refused.value)
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE


async def test_a_send_the_gateway_took_before_it_stopped_stays_of_unknown_outcome(
    silent_gateway: tuple[grpc.aio.Server, Unanswered, int],
) -> None:
    server, gateway, port = silent_gateway
    client = ParleyClient(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
    try:
        pending = asyncio.create_task(client.send("c" * 32, "maybe", idempotency_key="key-1", timeout=6.0))
        await asyncio.wait_for(gateway.received.wait(), 30)
        await server.stop(None)  # the request went out; every later attempt finds no gateway
        with pytest.raises(OutcomeUnknown) as unknown:
            await pending
    finally:
        await client.close()
    assert unknown.value.idempotency_key == "key-1"
    assert unknown.value.last.code == grpc.StatusCode.UNAVAILABLE
