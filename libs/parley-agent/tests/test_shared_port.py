"""The gateway's shared client port: claimed by one platform only, joined by its instances, and
left by a draining instance before its server stops, with real gRPC servers on loopback."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from parley_agent.shared_port import SHARE_FILE_ENV, SharedPort
from parley_core.listeners import stop_listening
from parley_core.port_share import ShareFile
from parley_testing.waiting import until

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
    async with SharedPort("gateway") as shared:
        yield shared


async def test_the_claim_keeps_other_platforms_out_and_gets_no_connection(port: SharedPort) -> None:
    with pytest.raises(OSError, match="in use"):  # a second platform started by the same user
        await SharedPort("gateway", port=port.port).start()
    with socket.socket() as plain:  # any other program's plain bind
        plain.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with pytest.raises(OSError, match="in use"):
            plain.bind((port.host, port.port))
    assert port.instance_environment() == {"PARLEY_SHARED_LISTEN_ADDRESS": port.address}
    assert port.instance_environment("127.0.0.1:5001")[SHARE_FILE_ENV] == str(port.share_file("127.0.0.1:5001"))
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


async def canary_answers(address: str, connections: int) -> int:
    """How many of `connections` new connections the canary (this process's instance) answered."""
    answered = 0
    for _ in range(connections):
        channel = new_connection(address)
        try:
            answered += await answers_as(channel, "canary")
        finally:
            await channel.close()
    return answered


async def test_a_canary_takes_the_share_the_agent_gives_it(port: SharedPort) -> None:
    """Without a share a canary beside one stable instance takes half the new connections (the
    kernel's even spread); with one it takes that share: 10 %, then 50 %, then even again.
    Statistical: the bounds are about four standard deviations wide."""
    command = [sys.executable, "-c", INSTANCE, port.address, "stable"]
    stable = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert stable.stdout is not None
    canary_address = "127.0.0.1:5002"  # the canary's own address names its share file
    port.set_share(canary_address, 10)  # before it starts, as the agent does for a roll-out's new instance
    try:
        assert await asyncio.to_thread(stable.stdout.readline) == "ready\n"
        canary = await instance_in_this_process(port.address, "canary")  # joins last, as a canary does
        share = ShareFile(port.address, Path(port.instance_environment(canary_address)[SHARE_FILE_ENV]))
        assert share.apply() == 10
        follower = share.following()
        follower.start()
        try:
            answered = await canary_answers(port.address, 400)
            assert 16 <= answered <= 72, f"the canary took {answered} of 400 new connections at a 10 % share"

            # An instance given no share (a stable one restarting) leaves the canary's program alone.
            assert (
                ShareFile(port.address, Path(port.instance_environment("127.0.0.1:5003")[SHARE_FILE_ENV])).apply()
                == 100
            )
            answered = await canary_answers(port.address, 200)
            assert answered <= 40, f"the canary took {answered} of 200 new connections at a 10 % share"

            port.set_share(canary_address, 50)
            await until(lambda: share.applied == 50, "the canary to apply its 50 % share", TIMEOUT_S)
            answered = await canary_answers(port.address, 200)
            assert 70 <= answered <= 130, f"the canary took {answered} of 200 new connections at 50 %"

            port.remove(canary_address)  # the roll-out ended: no share, the kernel's even spread
            await until(lambda: share.applied == 100, "the canary to drop its share", TIMEOUT_S)
            answered = await canary_answers(port.address, 200)
            assert 70 <= answered <= 130, f"the canary took {answered} of 200 new connections without a share"
        finally:
            await follower.stop()
            await canary.stop(0)
    finally:
        stable.communicate(input="", timeout=TIMEOUT_S)
