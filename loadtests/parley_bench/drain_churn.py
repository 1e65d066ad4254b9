"""Calls lost while one instance of two is replaced, for each way a client port can be drained.

`cd loadtests && ../.venv/bin/python -m parley_bench.drain_churn` runs, for each mode, clients
that open a new connection for every call (gRPC health checks, the worst case for a drain) while
one of two instances is replaced four times, and prints the calls that succeeded and failed:

- `front-door`: the node agent's TCP proxy; the old instance is removed from it, then stopped;
- `shared`: the instances share the port (SO_REUSEPORT) and the old one simply stops;
- `shared-leave`: the same, but the old one first leaves the port (parley_core.listeners), as
  the runner does, and stops its server SHARED_PORT_SETTLE_S later.

The figures in parley_core.listeners come from this. Whether net.ipv4.tcp_migrate_req is on is
printed with them; to try the other setting without changing this host's, run it as root in a
network namespace of its own: `unshare -n sh -c 'ip link set lo up; sysctl -w
net.ipv4.tcp_migrate_req=1; ../.venv/bin/python -m parley_bench.drain_churn'`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from parley_agent.front_door import FrontDoor
from parley_agent.shared_port import SharedPort, requests_migrate
from parley_core.listeners import stop_listening
from parley_core.runner import SHARED_PORT_SETTLE_S

MODES = ("front-door", "shared", "shared-leave")
CLIENTS = 8
REPLACEMENTS = 4
BETWEEN_REPLACEMENTS_S = 2.0
GRACE_S = 5.0
CALL_TIMEOUT_S = 5.0


async def serve(address: str, mode: str) -> None:
    """One instance: a health server on `address`, drained on SIGTERM the way `mode` says."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0 if mode == "front-door" else 1)])
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    port = server.add_insecure_port(address)
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"127.0.0.1:{port}", flush=True)
    await stop.wait()
    if mode == "shared-leave" and stop_listening(address):
        await asyncio.sleep(SHARED_PORT_SETTLE_S)
    await server.stop(GRACE_S)


def start_instance(address: str, mode: str) -> tuple[subprocess.Popen[str], str]:
    """An instance process and its own address, once it listens."""
    command = [sys.executable, "-m", "parley_bench.drain_churn", "--serve", address, "--mode", mode]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


@dataclass
class Tally:
    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)


async def call_until(address: str, deadline: float, tally: Tally) -> None:
    # A channel of its own per call, with its own connection (gRPC otherwise shares one per address).
    options = [("grpc.use_local_subchannel_pool", 1)]
    while time.monotonic() < deadline:
        async with grpc.aio.insecure_channel(address, options=options) as channel:
            check = channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            try:
                await check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
                tally.ok += 1
            except grpc.aio.AioRpcError as exc:
                tally.failed[exc.code().name] += 1


async def measure(mode: str) -> Tally:
    door: FrontDoor | SharedPort = await (FrontDoor("bench") if mode == "front-door" else SharedPort("bench")).start()
    listen_on = "127.0.0.1:0" if mode == "front-door" else door.address
    instances = [await asyncio.to_thread(start_instance, listen_on, mode) for _ in range(2)]
    for _, address in instances:
        door.add(address)
    tally = Tally()
    deadline = time.monotonic() + REPLACEMENTS * BETWEEN_REPLACEMENTS_S + 4.0

    async def replace_one_repeatedly() -> None:
        for _ in range(REPLACEMENTS):
            await asyncio.sleep(BETWEEN_REPLACEMENTS_S)
            new = await asyncio.to_thread(start_instance, listen_on, mode)
            door.add(new[1])
            old = instances.pop(0)
            door.remove(old[1])
            old[0].send_signal(signal.SIGTERM)
            await asyncio.to_thread(old[0].wait)
            instances.append(new)

    try:
        await asyncio.gather(
            replace_one_repeatedly(), *(call_until(door.address, deadline, tally) for _ in range(CLIENTS))
        )
    finally:
        for process, _ in instances:
            process.send_signal(signal.SIGTERM)
            process.wait()
        await door.stop()
    return tally


async def main() -> None:
    print(f"net.ipv4.tcp_migrate_req: {requests_migrate()}; {CLIENTS} clients, a new connection per call")
    for mode in MODES:
        tally = await measure(mode)
        failed = ", ".join(f"{code} {n}" for code, n in sorted(tally.failed.items())) or "none"
        print(f"{mode:<13} {REPLACEMENTS} replacements: {tally.ok} calls answered, failed: {failed}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, default="shared-leave", help=argparse.SUPPRESS)
    args = parser.parse_args()
    asyncio.run(serve(args.serve, args.mode) if args.serve else main())
