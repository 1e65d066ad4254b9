"""The platform-side measurements of `make bench`, each a small closed- or open-loop load.

Every scenario uses the public client SDK against the gateway, as an application would, and
records what it saw: counts, rates and latency samples. Latencies are measured on one clock
(this process's monotonic clock), from just before a send to the arrival on a live stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from parley_client import LiveStream, ParleyClient, ParleyError

PASSWORD = "bench-passphrase-0123"  # noqa: S105 - throw-away benchmark accounts


@dataclass
class Member:
    client: ParleyClient
    username: str
    stream: LiveStream | None = None
    reader: asyncio.Task[None] | None = None


@dataclass
class Deliveries:
    """Arrivals on live streams, keyed by message body (each body is unique in a run)."""

    count: int = 0
    latencies_s: list[float] = field(default_factory=list)
    sent_at: dict[str, float] = field(default_factory=dict)
    last_arrival: float = 0.0

    def reset(self) -> None:
        """Start a new phase on the same live streams."""
        self.count = 0
        self.latencies_s.clear()
        self.sent_at.clear()
        self.last_arrival = 0.0

    def arrived(self, body: str) -> None:
        now = time.perf_counter()
        self.count += 1
        self.last_arrival = now
        if (started := self.sent_at.get(body)) is not None:
            self.latencies_s.append(now - started)


class Bench:
    def __init__(self, gateway_address: str, ca_cert: bytes) -> None:
        self.gateway_address = gateway_address
        self.ca_cert = ca_cert
        self._members: list[Member] = []

    def connect(self) -> ParleyClient:
        return ParleyClient.connect(self.gateway_address, ca_cert=self.ca_cert)

    async def new_member(self, prefix: str) -> Member:
        client = self.connect()
        username = f"{prefix}-{uuid.uuid4().hex[:10]}"
        await client.register(username, PASSWORD)
        await client.login(username, PASSWORD)
        member = Member(client, username)
        self._members.append(member)
        return member

    async def new_members(self, prefix: str, count: int, parallel: int = 8) -> list[Member]:
        gate = asyncio.Semaphore(parallel)

        async def one() -> Member:
            async with gate:
                return await self.new_member(prefix)

        return list(await asyncio.gather(*(one() for _ in range(count))))

    async def listen(self, member: Member, channel_ids: list[str], deliveries: Deliveries) -> None:
        """Open a live stream and count what arrives until the run closes it."""
        stream = member.client.subscribe(channel_ids)
        await asyncio.wait_for(stream.ready(), 30)
        member.stream = stream

        async def read() -> None:
            with contextlib.suppress(ParleyError, asyncio.CancelledError, StopAsyncIteration):
                async for message in stream:
                    deliveries.arrived(message.body)

        member.reader = asyncio.create_task(read())

    async def close(self) -> None:
        for member in self._members:
            if member.stream is not None:
                member.stream.cancel()
            if member.reader is not None:
                member.reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await member.reader
            await member.client.close()
        self._members.clear()


@dataclass
class SendRun:
    acknowledged: int
    failed: int
    seconds: float
    latencies_s: list[float]

    @property
    def per_second(self) -> float:
        return self.acknowledged / self.seconds if self.seconds else 0.0


async def closed_loop_sends(
    senders: list[tuple[Member, str]], *, seconds: float, deliveries: Deliveries | None = None
) -> SendRun:
    """Each (member, channel) pair sends back to back for `seconds`: the maximum sustained rate."""
    acknowledged = failed = 0
    call_latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def loop(member: Member, channel_id: str) -> None:
        nonlocal acknowledged, failed
        while time.perf_counter() < deadline:
            body = f"max {uuid.uuid4().hex}"
            started = time.perf_counter()
            if deliveries is not None:
                deliveries.sent_at[body] = started
            try:
                await member.client.send(channel_id, body)
            except ParleyError:
                failed += 1
                continue
            call_latencies.append(time.perf_counter() - started)
            acknowledged += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop(m, c) for m, c in senders))
    return SendRun(acknowledged, failed, time.perf_counter() - started, call_latencies)


async def open_loop(
    action: Callable[[int], Awaitable[None]], *, rate: float, seconds: float
) -> tuple[int, int, list[float]]:
    """Start `action(i)` at a fixed rate whatever the latency (no coordinated omission).

    Returns (succeeded, failed, per-call latencies measured from the scheduled start).
    """
    total = max(1, int(rate * seconds))
    started = time.perf_counter()
    latencies: list[float] = []
    outcome = {"ok": 0, "failed": 0}

    async def one(i: int, scheduled: float) -> None:
        try:
            await action(i)
        except ParleyError:
            outcome["failed"] += 1
            return
        latencies.append(time.perf_counter() - scheduled)
        outcome["ok"] += 1

    tasks = []
    for i in range(total):
        scheduled = started + i / rate
        if (delay := scheduled - time.perf_counter()) > 0:
            await asyncio.sleep(delay)  # pacing an open-loop load, not waiting for a condition
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    return outcome["ok"], outcome["failed"], latencies


async def wait_for_count(read: Callable[[], int], expected: int, *, timeout: float) -> bool:
    """Wait until `read()` reaches `expected`; False when the timeout passes first."""
    deadline = time.perf_counter() + timeout
    delay = 0.005
    while read() < expected:
        if time.perf_counter() > deadline:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)
    return True


async def archive_lag_probe(prober: Member, channel_id: str, stop: asyncio.Event, lags_s: list[float]) -> None:
    """While `stop` is unset: send a marker and time how long until history serves it."""
    while not stop.is_set():
        sent = await prober.client.send(channel_id, f"probe {uuid.uuid4().hex}")
        acked = time.perf_counter()
        delay = 0.002
        while True:
            page = await prober.client.history(channel_id, after_seq=sent.channel_seq - 1, limit=1)
            if page.messages and page.messages[0].message_id == sent.message_id:
                lags_s.append(time.perf_counter() - acked)
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)
