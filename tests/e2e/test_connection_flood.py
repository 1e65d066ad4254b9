"""An outsider with no account floods the client port with idle TCP connections (no TLS
handshake): 22,000 of them once used up the gateway's file descriptors, so a real login then
failed with DEADLINE_EXCEEDED, and they stayed open for minutes.

The platform runs as `parley up` starts it, with a low cap of connections per source and a short
handshake timeout so the test takes seconds. The flood comes from 127.0.0.2 and opens its
connections in two waves: the first is one over the cap, so the cap's sweep closing one of them
shows it has seen the rest; the cap then closes the whole later wave (a source keeps its oldest
connections) while the first is still open, a login from 127.0.0.3 meanwhile succeeds, and the
handshake timeout closes the first wave too.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import grpc
import pytest
from parley.auth.v1 import auth_pb2
from parley.gateway.v1 import gateway_pb2_grpc

from parley_testing.platform import RunningPlatform, platform_in
from parley_testing.relay import SourceRelay
from parley_testing.sockets import closed_by_server
from parley_testing.stack import PASSWORD
from parley_testing.waiting import until

pytestmark = pytest.mark.e2e

CAP = 4
LATER_WAVE = 16
HANDSHAKE_TIMEOUT_S = 15
FLOODER, CLIENT = "127.0.0.2", "127.0.0.3"


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlatform]:
    running = platform_in(
        tmp_path_factory.mktemp("flood"),
        PARLEY_CLIENT_CONNECTIONS_PER_SOURCE=str(CAP),
        PARLEY_CLIENT_HANDSHAKE_TIMEOUT_SECONDS=str(HANDSHAKE_TIMEOUT_S),
    )
    yield from running.served()


def idle_connections(address: str, count: int) -> list[socket.socket]:
    """TCP connections from FLOODER that never start a TLS handshake."""
    host, _, port = address.rpartition(":")
    opened = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)), source_address=(FLOODER, 0))
        sock.setblocking(False)
        opened.append(sock)
    return opened


async def first_wave(address: str) -> list[socket.socket]:
    """CAP connections the gateway's cap has seen: one more is opened, and the sweep closes one."""
    opened = idle_connections(address, CAP + 1)
    try:
        await until(lambda: any(closed_by_server(s) for s in opened), "the cap to close one over it", timeout=30)
    except BaseException:
        for sock in opened:
            sock.close()
        raise
    kept = [s for s in opened if not closed_by_server(s)]
    for sock in opened:
        if sock not in kept:
            sock.close()
    assert len(kept) == CAP
    return kept


async def test_one_sources_idle_connections_are_capped_and_timed_out_and_others_still_log_in(
    edge: RunningPlatform,
) -> None:
    first = await first_wave(edge.gateway_address)
    later: list[socket.socket] = []
    try:
        later = idle_connections(edge.gateway_address, LATER_WAVE)
        await until(lambda: all(closed_by_server(s) for s in later), "the cap to close the later wave", timeout=30)
        # The source's oldest connections are the ones it keeps; the cap alone closed the others.
        assert not any(closed_by_server(s) for s in first)

        relay = await SourceRelay(edge.gateway_address, CLIENT).start()
        channel = grpc.aio.secure_channel(
            relay.address,
            grpc.ssl_channel_credentials(root_certificates=edge.ca_cert.read_bytes()),
            options=[("grpc.ssl_target_name_override", "gateway")],
        )
        try:
            gateway = gateway_pb2_grpc.GatewayStub(channel)
            await gateway.Register(auth_pb2.RegisterRequest(username="bystander", password=PASSWORD), timeout=30)
            login = await gateway.Login(auth_pb2.LoginRequest(username="bystander", password=PASSWORD), timeout=30)
            assert login.access_token
        finally:
            await channel.close()
            await relay.stop()

        # No handshake within the timeout: the first wave goes too.
        await until(lambda: all(closed_by_server(s) for s in first), "the handshake timeout", timeout=60)
        assert '"security_event": "connections_over_cap"' in edge.log("gateway")
    finally:
        for sock in first + later:
            sock.close()


async def test_the_browser_port_counts_against_the_same_cap(edge: RunningPlatform) -> None:
    """The gateway's web port (Connect, for browsers) is as open to strangers as its gRPC port."""
    web = urlsplit(edge.web_url)
    held = await first_wave(f"{web.hostname}:{web.port}")
    more: list[socket.socket] = []
    try:
        more = idle_connections(f"{web.hostname}:{web.port}", LATER_WAVE)
        await until(lambda: all(closed_by_server(s) for s in more), "the cap to close the later wave", timeout=30)
        assert not any(closed_by_server(s) for s in held)
        await until(lambda: all(closed_by_server(s) for s in held), "the handshake timeout", timeout=60)
    finally:
        for sock in held + more:
            sock.close()
