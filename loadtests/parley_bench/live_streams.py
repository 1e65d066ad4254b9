"""How many live streams one gateway process holds, what they cost it in memory, and how fast a
message reaches every stream of its channel.

On a platform of its own (started after the other phases), so the gateway's memory is that of
its streams: `streams` live streams, one channel each, `MEMBERS_PER_CHANNEL` streams per channel
from as many users, each user's streams multiplexed over one HTTP/2 connection. The per-user
stream cap is set for the bench (`PARLEY_GATEWAY_LIVE_STREAMS_PER_USER`, printed in the report)
so that `streams / cap` users carry them; the per-address call budget is lifted, since every
client here shares one loopback address. Then one message is sent to each channel, open loop,
and the time from each send to its arrival on each stream of the channel gives the p50/p99.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parley_bench.platform_proc import BenchPlatform
from parley_bench.scenarios import PASSWORD, open_loop, wait_for_count
from parley_bench.stats import percentile
from parley_client import LiveStream, ParleyClient, ParleyError
from parley_core.nats_connect import connect_as_platform

MEMBERS_PER_CHANNEL = 10
STREAMS_PER_USER = 50  # the bench's setting of the per-user cap (the default is 20)
OPEN_IN_FLIGHT = 200  # Subscribe calls in flight while the streams open
OPEN_ATTEMPTS = 5  # a Subscribe refused as UNAVAILABLE (an overloaded moment) is retried, and counted
IDLE_WINDOW_S = 5.0  # the gateway's CPU with every stream open and nothing sent
SEND_RATE = 50.0  # sends per second, one per channel
SETUP_IN_FLIGHT = 16
USERS_IN_FLIGHT = 4  # registrations and logins hash with argon2id: more in flight only queue up
SETUP_ATTEMPTS = 5
DELIVERY_TIMEOUT_S = 120.0
GIB = 1024**3


@dataclass
class Arrivals:
    """Arrivals of the measured messages on the streams, by message body."""

    sent_at: dict[str, float] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list)
    count: int = 0

    def arrived(self, body: str) -> None:
        if (started := self.sent_at.get(body)) is not None:
            self.latencies_s.append(time.perf_counter() - started)
            self.count += 1


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> tuple[int, int]:
    """(resident now, peak resident) of a process, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


async def msg_consumers(data_dir: Path) -> int:
    """Consumers on the MSG stream, as nats-server counts them: the gateway's share is its feed."""
    state = json.loads((data_dir / "platform.json").read_text())
    nc = await connect_as_platform(data_dir, url=state["nats_url"], name="parley-bench", allow_reconnect=False)
    try:
        return (await nc.jetstream().stream_info("MSG")).state.consumer_count
    finally:
        await nc.close()


async def _retried(call: Any) -> Any:
    """A setup call, again after a moment when the loaded machine answered it too late."""
    for attempt in range(SETUP_ATTEMPTS):
        try:
            return await call()
        except ParleyError as exc:
            if exc.code.name not in ("DEADLINE_EXCEEDED", "UNAVAILABLE") or attempt == SETUP_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


async def _gathered(count: int, in_flight: int, make: Any) -> list[Any]:
    gate = asyncio.Semaphore(in_flight)

    async def one(i: int) -> Any:
        async with gate:
            return await make(i)

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def measure_live_streams(workdir: Path, *, streams: int) -> dict[str, Any]:
    channels = max(1, streams // MEMBERS_PER_CHANNEL)
    users = max(MEMBERS_PER_CHANNEL, channels * MEMBERS_PER_CHANNEL // STREAMS_PER_USER)
    platform = BenchPlatform(
        workdir / "live-data",
        env={
            "PARLEY_GATEWAY_LIVE_STREAMS_PER_USER": str(STREAMS_PER_USER),
            "PARLEY_GATEWAY_SOURCE_RATE": "100000",
            "PARLEY_GATEWAY_SOURCE_BURST": "100000",
            # Every user connects from 127.0.0.1, one connection each.
            "PARLEY_CLIENT_CONNECTIONS_PER_SOURCE": str(users + 100),
        },
    )
    await platform.start()
    clients: list[ParleyClient] = []
    opened: list[LiveStream] = []
    readers: list[asyncio.Task[None]] = []
    try:
        address, ca_cert = platform.gateway_address, platform.ca_cert
        started = time.perf_counter()

        async def new_user(i: int) -> ParleyClient:
            client = ParleyClient.connect(address, ca_cert=ca_cert)
            name = f"live{i}-{uuid.uuid4().hex[:8]}"
            try:
                await _retried(lambda: client.register(name, PASSWORD))
            except ParleyError as exc:
                if exc.code.name != "ALREADY_EXISTS":  # a retry of a registration that went through
                    raise
            await _retried(lambda: client.login(name, PASSWORD))
            return client

        clients = await _gathered(users, USERS_IN_FLIGHT, new_user)

        # Channel c's members are users c, c+k, c+2k... (k spreads them), its first member owns it.
        spread = max(1, users // MEMBERS_PER_CHANNEL)
        members = [[clients[(c + m * spread) % users] for m in range(MEMBERS_PER_CHANNEL)] for c in range(channels)]

        async def new_channel(c: int) -> str:
            owner, *others = members[c]
            channel_id: str = (await _retried(lambda: owner.create_channel(f"live-{c}"))).channel_id
            for other in others:
                await _retried(lambda: other.join_channel(channel_id))  # noqa: B023 - awaited at once
            return channel_id

        channel_ids = await _gathered(channels, SETUP_IN_FLIGHT, new_channel)
        setup_s = time.perf_counter() - started
        gateway_pid = platform.pid_of("gateway")
        rss_before, _ = rss_bytes(gateway_pid)

        arrivals = Arrivals()

        async def read(stream: LiveStream) -> None:
            with contextlib.suppress(ParleyError, asyncio.CancelledError):
                async for message in stream:
                    arrivals.arrived(message.body)

        retries = 0

        async def open_stream(i: int) -> None:
            nonlocal retries
            c, m = divmod(i, MEMBERS_PER_CHANNEL)
            for attempt in range(OPEN_ATTEMPTS):
                stream = members[c][m].subscribe([channel_ids[c]])
                try:
                    await asyncio.wait_for(stream.ready(), 60)
                    break
                except ParleyError as exc:
                    if exc.code.name != "UNAVAILABLE" or attempt == OPEN_ATTEMPTS - 1:
                        raise
                    retries += 1
                    await asyncio.sleep(0.5 * 2**attempt)  # backing off as the SDK's live() does
            opened.append(stream)
            readers.append(asyncio.create_task(read(stream)))
            if len(opened) % 1000 == 0:
                rss, _ = rss_bytes(gateway_pid)
                print(f"[bench] {len(opened)} live streams open, gateway RSS {rss / 2**20:.0f} MiB", flush=True)

        started = time.perf_counter()
        await _gathered(channels * MEMBERS_PER_CHANNEL, OPEN_IN_FLIGHT, open_stream)
        open_s = time.perf_counter() - started
        rss_open, _ = rss_bytes(gateway_pid)
        consumers = await msg_consumers(platform.data_dir)
        idle_cpu = cpu_seconds(gateway_pid)
        await asyncio.sleep(IDLE_WINDOW_S)  # a measurement window, not a wait for a condition
        idle_cpu = cpu_seconds(gateway_pid) - idle_cpu
        busy_cpu = cpu_seconds(gateway_pid)

        async def send_one(c: int) -> None:
            body = f"to channel {c} {uuid.uuid4().hex[:8]}"
            arrivals.sent_at[body] = time.perf_counter()
            await members[c][0].send(channel_ids[c], body)

        ok, failed, send_calls = await open_loop(send_one, rate=SEND_RATE, seconds=channels / SEND_RATE)
        expected = ok * MEMBERS_PER_CHANNEL
        complete = await wait_for_count(lambda: arrivals.count, expected, timeout=DELIVERY_TIMEOUT_S)
        busy_cpu = cpu_seconds(gateway_pid) - busy_cpu
        rss_after, rss_peak = rss_bytes(gateway_pid)
        return {
            "live_streams": len(opened),
            "channels": channels,
            "streams_per_channel": MEMBERS_PER_CHANNEL,
            "users": users,
            "connections": users,
            "bench_setting_live_streams_per_user": STREAMS_PER_USER,
            "setup_s": round(setup_s, 1),
            "open_streams_s": round(open_s, 1),
            "streams_opened_per_s": round(len(opened) / open_s, 1) if open_s else 0.0,
            "stream_open_retries": retries,
            "msg_stream_consumers": consumers,
            "gateway_rss_before_streams_mib": round(rss_before / 2**20, 1),
            "gateway_rss_with_streams_mib": round(rss_open / 2**20, 1),
            "gateway_rss_after_delivery_mib": round(rss_after / 2**20, 1),
            "gateway_rss_peak_mib": round(rss_peak / 2**20, 1),
            "gateway_kib_per_stream": round((rss_open - rss_before) / 1024 / max(1, len(opened)), 1),
            "gateway_cpu_percent_idle_with_streams": round(100 * idle_cpu / IDLE_WINDOW_S, 1),
            "send_rate_per_s": SEND_RATE,
            "sends_acknowledged": ok,
            "sends_failed": failed,
            "send_call_p50_ms": round(percentile(send_calls, 0.5) * 1000, 2),
            "send_call_p99_ms": round(percentile(send_calls, 0.99) * 1000, 2),
            "deliveries": arrivals.count,
            "deliveries_expected": expected,
            "all_delivered": complete,
            "send_to_deliver_p50_ms": round(percentile(arrivals.latencies_s, 0.5) * 1000, 2),
            "send_to_deliver_p99_ms": round(percentile(arrivals.latencies_s, 0.99) * 1000, 2),
            # The sends' share included (the gateway forwards them too): CPU per delivered event.
            "gateway_cpu_ms_per_delivery": round(1000 * busy_cpu / max(1, arrivals.count), 3),
            "gateway_rss_peak_gib": round(rss_peak / GIB, 3),
        }
    finally:
        for stream in opened:
            stream.cancel()
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for client in clients:
            await client.close()
        await platform.stop()
