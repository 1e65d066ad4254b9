"""What this machine can do without Parley: the denominators of every benchmark ratio.

Each baseline uses the same transport settings as the platform (TLS with the platform's kind of
certificates, a TLS nats-server with JetStream on file storage, the auth service's argon2id
parameters), so a ratio says what Parley's own code costs on top.
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from nats.js import api

from parley_auth.passwords import HASHER
from parley_core.pki import ensure_pki
from parley_core.topology import NATS_IDENTITY, PLATFORM_USER
from parley_testing.nats import start_nats_test_server

ECHO_SERVICE = "parley.bench.Echo"
ECHO_METHOD = f"/{ECHO_SERVICE}/Echo"


def _identity(data: bytes) -> bytes:
    return data


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


async def echo_qps(workdir: Path, *, concurrency: int, seconds: float) -> float:
    """Unary calls per second of a grpc.aio echo server over TLS, one client channel, N in flight."""
    pki = ensure_pki(workdir / "pki", ["gateway", "platform"])
    identity = pki.identity("gateway")
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        ECHO_SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                _echo, request_deserializer=_identity, response_serializer=_identity
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    credentials = grpc.ssl_server_credentials([(identity.key.read_bytes(), identity.cert.read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    channel = grpc.aio.secure_channel(
        f"127.0.0.1:{port}",
        grpc.ssl_channel_credentials(root_certificates=pki.ca_cert.read_bytes()),
        options=[("grpc.ssl_target_name_override", "gateway")],
    )
    call = channel.unary_unary(ECHO_METHOD, request_serializer=_identity, response_deserializer=_identity)
    payload = b"x" * 64
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await call(payload, timeout=10)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await channel.close()
    await server.stop(None)
    return done / elapsed


async def jetstream_throughput(workdir: Path, *, messages: int, window: int = 256) -> float:
    """Messages per second from the first JetStream publish to the last one consumed and acked."""
    pki = ensure_pki(workdir / "nats-pki", [NATS_IDENTITY, PLATFORM_USER])
    server = await start_nats_test_server(pki, workdir / "nats")
    nc = await server.connect(PLATFORM_USER)
    try:
        js = nc.jetstream()
        # Under parley.>, the one tree the platform's NATS account reaches the streams' account on.
        await js.add_stream(api.StreamConfig(name="BENCH", subjects=["parley.bench.>"], storage=api.StorageType.FILE))
        payload = b"x" * 256
        consumed = 0
        all_consumed = asyncio.get_running_loop().create_future()

        async def on_msg(msg: object) -> None:
            nonlocal consumed
            await msg.ack()  # type: ignore[attr-defined]
            consumed += 1
            if consumed == messages and not all_consumed.done():
                all_consumed.set_result(None)

        sub = await js.subscribe(
            "parley.bench.>", cb=on_msg, manual_ack=True, config=api.ConsumerConfig(max_ack_pending=10_000)
        )
        started = time.perf_counter()
        for first in range(0, messages, window):
            batch = range(first, min(first + window, messages))
            await asyncio.gather(*(js.publish(f"parley.bench.{i % 64}", payload) for i in batch))
        await asyncio.wait_for(all_consumed, 120)
        elapsed = time.perf_counter() - started
        await sub.unsubscribe()
        return messages / elapsed
    finally:
        await server.close_clients()
        await server.process.stop()


def argon2_hashes_per_second(*, threads: int, seconds: float) -> float:
    """argon2id hashes per second with the auth service's own parameters, on `threads` threads.

    argon2-cffi releases the GIL while hashing, as the auth service's worker threads do.
    """
    deadline = time.perf_counter() + seconds

    def loop() -> int:
        count = 0
        while time.perf_counter() < deadline:
            HASHER.hash("bench-password-0123")
            count += 1
        return count

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        total = sum(pool.map(lambda _: loop(), range(threads)))
    return total / (time.perf_counter() - started)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
