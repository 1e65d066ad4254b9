"""The gateway's own refusals through a real gRPC server over TLS and a real nats-server.

No auth, messaging or storage run here: calls the gateway lets through fail to reach them, which
shows both the budget (refused before any internal call) and that internal failures reach the
client without internal detail.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest_asyncio

from parley_client import ParleyClient
from parley_core.bus import EventBus
from parley_core.net import free_port
from parley_core.pki import Pki
from parley_core.topology import STREAMS_BY_NAME
from parley_gateway.limits import GatewayLimits
from parley_gateway.service import GatewayApp
from parley_testing.nats import NatsTestServer
from parley_testing.stack import served_settings, start_serving
from parley_testing.statuses import refusal

TIMEOUT_S = 20.0
BURST = 3


@dataclass
class RunningGateway:
    client: ParleyClient
    nowhere: str


@pytest_asyncio.fixture
async def gateway(nats_server: NatsTestServer, pki: Pki, tmp_path: Path) -> AsyncIterator[RunningGateway]:
    auth = await nats_server.connect("auth")
    await EventBus(auth, service="auth", producer="auth@test").ensure_streams([STREAMS_BY_NAME["AUTH"]])
    nowhere = f"127.0.0.1:{free_port()}"  # internal services that are down
    peers = {f"{peer}_addr": nowhere for peer in ("auth", "messaging", "storage")}
    settings = served_settings(nats_server, pki, tmp_path, "gateway", grace_seconds=1, **peers)
    limits = GatewayLimits(source_rate=0.01, source_burst=BURST, max_request_bytes=4096)
    served = await start_serving(GatewayApp(limits), service="gateway", settings=settings, client_facing=True)
    client = ParleyClient.connect(f"127.0.0.1:{served.port}", ca_cert=pki.ca_pem())
    try:
        yield RunningGateway(client, nowhere)
    finally:
        await client.close()
        await served.shutdown()


async def test_oversized_request_is_refused_before_anything_else(gateway: RunningGateway) -> None:
    error = await refusal(gateway.client.register("x" * 5000, "a-long-enough-passphrase"))
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit is 4096 bytes" in error.message


async def test_internal_failure_hides_detail_and_budget_gives_a_retry_hint(gateway: RunningGateway) -> None:
    for _ in range(BURST):
        error = await refusal(gateway.client.register("alice", "a-long-enough-passphrase"))
        assert error.code == grpc.StatusCode.UNAVAILABLE
        assert error.message.startswith("the service is briefly unavailable; retry shortly")
        assert gateway.nowhere.split(":")[1] not in error.message
    limited = await refusal(gateway.client.register("alice", "a-long-enough-passphrase"))
    assert limited.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert limited.retry_after_s is not None
    assert limited.retry_after_s > 1  # 0.01 calls a second: about 100 s for the next one
    assert "too many requests from this address" in limited.message


async def test_calls_without_a_valid_token_are_refused(gateway: RunningGateway) -> None:
    error = await refusal(gateway.client.my_channels())
    assert error.code == grpc.StatusCode.UNAUTHENTICATED
