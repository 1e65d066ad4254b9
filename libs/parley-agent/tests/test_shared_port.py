"""The gateway's shared client port: claimed by one platform only, joined by its instances, and
left by a draining instance before its server stops, with real gRPC servers on loopback."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from parley_agent.shared_port import SharedPort
from parley_core.listeners import stop_listening

pytestmark = pytest.mark.asyncio
TIMEOUT_S = 10.0
# One instance in a process of its own: a health server on the shared port answering to its name.
INSTANCE = """
import asyncio, sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
async def main():
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    await health.set(sys.argv[2], health_pb2.HealthCheckResponse.SERVING)
    server.add_insecure_port(sys.argv[1])
    await server.start()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
asyncio.run(main())
"""


async def instance_in_this_process(address: str, name: str) -> grpc.aio.Server:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    server.add_insecure_port(address)
    await server.start()
    return server


async def answers_as(channel: grpc.aio.Channel, name: str) -> bool:
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    try:
        await check(health_pb2.HealthCheckRequest(service=name), timeout=TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:  # NOT_FOUND: the other instance answered
            raise
        return False
    return True


def new_connection(address: str) -> grpc.aio.Channel:
    """A channel with a connection of its own (gRPC otherwise shares one per address)."""
    return grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


@pytest_asyncio.fixture
async def port() -> AsyncIterator[SharedPort]:
    shared = await SharedPort("gateway").start()
    yield shared
    await shared.stop()


async def test_the_claim_keeps_other_platforms_out_and_gets_no_connection(port: SharedPort) -> None:
    with pytest.raises(OSError, match="in use"):  # a second platform started by the same user
        await SharedPort("gateway", port=port.port).start()
    with socket.socket() as plain:  # any other program's plain bind
        plain.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with pytest.raises(OSError, match="in use"):
            plain.bind((port.host, port.port))
    assert port.instance_environment() == {"PARLEY_SHARED_LISTEN_ADDRESS": port.address}
    # With no instance listening, the claim refuses connections rather than queueing them.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((port.host, port.port), timeout=TIMEOUT_S).close()


async def test_a_leaving_instance_gets_no_new_connection_and_keeps_serving_its_own(port: SharedPort) -> None:
    command = [sys.executable, "-c", INSTANCE, port.address, "other"]
    other = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert other.stdout is not None
    try:
        assert await asyncio.to_thread(other.stdout.readline) == "ready\n"
        leaving = await instance_in_this_process(port.address, "leaving")
        channels: list[grpc.aio.Channel] = []
        try:
            # A connection the kernel gave to the leaving instance (each new one goes to either).
            for _ in range(100):
                channels.append(kept := new_connection(port.address))
                if await answers_as(kept, "leaving"):
                    break
            else:
                pytest.fail("no connection reached the instance in this process")

            assert stop_listening(port.address) == 1

            for _ in range(20):
                channels.append(fresh := new_connection(port.address))
                assert await answers_as(fresh, "other")
            assert await answers_as(kept, "leaving")  # its open connection is still served
        finally:
            for channel in channels:
                await channel.close()
            await leaving.stop(0)
    finally:
        other.communicate(input="", timeout=TIMEOUT_S)
