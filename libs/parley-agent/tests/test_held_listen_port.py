"""An instance's own listen port, held by its node agent from the moment it is chosen until the
instance stops for good: a port merely found free was taken, now and then, by some connection's
source port before the instance (which listens only after its replay) bound it, and the
instance then failed to start ("Failed to bind"). Real NATS, a real service, real sockets."""

from __future__ import annotations

import socket

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parley_agent.shared_port import claim
from parley_core.grpc_channel import secure_channel
from parley_testing.nats import NatsTestServer
from parley_testing.stack import Stack, start_service

pytestmark = pytest.mark.asyncio


def plain_bind_refused(port: int) -> bool:
    """Whether another program's bind to the port (or a connection's source port) is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        try:
            other.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


async def test_a_held_port_is_no_one_elses_and_the_instance_it_is_held_for_serves_on_it(
    stack: Stack, nats_server: NatsTestServer
) -> None:
    held = claim("127.0.0.1", 0)
    port = held.getsockname()[1]
    try:
        assert plain_bind_refused(port), "a held port must be refused to anyone else"
        running = await start_service(
            stack, nats_server, "messaging", registration="open", listen_port=port, listen_port_held=True
        )
        try:
            assert running.port == port
            own = secure_channel(stack.pki, identity="gateway", address=f"127.0.0.1:{port}", peer="messaging")
            try:
                answer = await health_pb2_grpc.HealthStub(own).Check(health_pb2.HealthCheckRequest(), timeout=10)
            finally:
                await own.close()
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            await running.shutdown()
        assert plain_bind_refused(port), "still held after the instance stopped: a restart gets it back"
    finally:
        held.close()
    assert not plain_bind_refused(port), "released once the agent lets go"


async def test_an_instance_not_told_its_port_is_held_refuses_to_share_it(
    stack: Stack, nats_server: NatsTestServer
) -> None:
    """Why the agent says so: without SO_REUSEPORT an instance cannot bind the held port, and it
    never sets it unasked (a second platform could otherwise share a port unseen)."""
    held = claim("127.0.0.1", 0)
    try:
        with pytest.raises(RuntimeError, match="Failed to bind"):
            await start_service(stack, nats_server, "messaging", registration="open", listen_port=held.getsockname()[1])
    finally:
        held.close()
