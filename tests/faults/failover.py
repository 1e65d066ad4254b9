"""A sender and a watcher that move to the next gateway when their own is lost, and history read
whole: the host-loss fault tests' clients."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from parley_client import ParleyClient, ParleyError
from parley_testing.stack import PASSWORD
from parley_testing.waiting import eventually, until

RECONNECT_PAUSE_S = 0.2  # a client's pacing between tries while its gateway is gone, not a wait for state


@dataclass
class FailoverSender:
    """One person sending, each message under its own key; when its gateway is gone it moves to the
    next one, logs in there and sends the same message again (the key makes it count once)."""

    name: str
    addresses: list[str]
    ca_cert: bytes
    at: int = 0
    client: ParleyClient | None = None
    acknowledged: list[str] = field(default_factory=list)
    refused: int = 0
    moves: int = 0
    refusals: list[str] = field(default_factory=list)  # where and why, for the report

    async def connect(self) -> ParleyClient:
        self.client = ParleyClient.connect(self.addresses[self.at], ca_cert=self.ca_cert)
        await self.client.login(self.name, PASSWORD)
        return self.client

    async def move(self) -> None:
        if self.client is not None:
            await self.client.close()
        self.at = (self.at + 1) % len(self.addresses)
        self.moves += 1
        while True:
            try:
                await self.connect()
                return
            except ParleyError:
                self.refused += 1  # the next gateway not reachable either yet: on to the one after

    async def run(self, channel_id: str, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            body, key = f"{self.name} {n}", f"{self.name}-{n}"
            while True:
                assert self.client is not None
                try:
                    await self.client.send(channel_id, body, idempotency_key=key)
                except ParleyError as error:
                    self.refused += 1
                    self.refusals.append(f"{self.name} via {self.addresses[self.at]}: {error}"[:200])
                    await self.move()
                    continue
                self.acknowledged.append(body)
                break


@dataclass
class FailoverWatcher:
    """One person following the channel live; when the gateway is gone, logs in at the next one
    and resumes the stream from the last position read (no gap, no repeat)."""

    name: str
    addresses: list[str]
    ca_cert: bytes
    at: int = 0
    delivered: list[str] = field(default_factory=list)
    positions: dict[str, int] = field(default_factory=dict)
    resumes: int = 0

    async def run(self, channel_id: str, ready: asyncio.Event) -> None:
        while True:
            client = ParleyClient.connect(self.addresses[self.at], ca_cert=self.ca_cert)
            try:
                await client.login(self.name, PASSWORD)
                stream = client.subscribe([channel_id], resume=self.positions or None)
                await stream.ready()
                ready.set()
                self.positions = stream.positions  # updated as events are read
                async for event in stream.events():
                    if event.kind == "message":
                        self.delivered.append(event.message.body)
            except ParleyError:
                pass  # the gateway is gone (or not reachable yet): on to the next one
            finally:
                await client.close()
            self.at = (self.at + 1) % len(self.addresses)
            self.resumes += 1
            await asyncio.sleep(RECONNECT_PAUSE_S)


async def all_bodies(client: ParleyClient, channel_id: str) -> list[str]:
    bodies: list[str] = []
    after = 0
    while True:
        page = await client.history(channel_id, after_seq=after, limit=500)
        bodies.extend(m.body for m in page.messages)
        if not page.has_more:
            return bodies
        after = page.messages[-1].channel_seq


@dataclass(frozen=True)
class Loss:
    acknowledged_before: int
    killed_pids: list[int]
    seconds_to_acks_after: float
    afterwards: dict[str, object] = field(default_factory=dict)  # what `afterwards` reported


async def send_through_a_loss(
    senders: list[FailoverSender],
    channel_id: str,
    lose: Callable[[], Awaitable[list[int]]],
    *,
    acks_after: int,
    what: str,
    acks_before: int = 50,
    afterwards: Callable[[], Awaitable[dict[str, object]]] | None = None,
) -> Loss:
    """`senders` sending all along; `lose` (a host's kill -9, its pids) once `acks_before` sends
    are acknowledged; on until `acks_after` more are, then `afterwards` (a roll-out, say) while
    they go on. The senders have stopped on return."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(s.run(channel_id, stop)) for s in senders]

    def acknowledged() -> int:
        return sum(len(s.acknowledged) for s in senders)

    try:
        await until(lambda: acknowledged() >= acks_before, "sends before the loss", timeout=60)
        killed_at = time.monotonic()
        pids = await lose()
        before = acknowledged()
        await until(lambda: acknowledged() >= before + acks_after, f"sends after {what}", timeout=300)
        seconds = round(time.monotonic() - killed_at, 1)
        return Loss(before, pids, seconds, await afterwards() if afterwards is not None else {})
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def history_holding(client: ParleyClient, channel_id: str, acked: list[str], timeout: float = 120) -> list[str]:
    """The channel's history once it holds every acknowledged body (repeats kept, for counting)."""
    history: list[str] = []

    async def archived_all() -> bool | None:
        nonlocal history
        history = await all_bodies(client, channel_id)
        return True if set(acked) <= set(history) else None

    await eventually(archived_all, "every acknowledged send in history", timeout)
    return history


async def enrol(
    senders: list[FailoverSender], channel_id: str, gateway: str, ca_cert: bytes, *, others: Sequence[str] = ()
) -> None:
    """Every sender (and each of `others`, watchers say) registered on `gateway` and in the channel;
    then each sender logged in on its first gateway."""
    for person in [s.name for s in senders] + list(others):
        registering = ParleyClient.connect(gateway, ca_cert=ca_cert)
        await registering.register(person, PASSWORD)
        await registering.login(person, PASSWORD)
        await registering.join_channel(channel_id)
        await registering.close()
    for sender in senders:
        await sender.connect()


def loss_figures(senders: list[FailoverSender], history: list[str], loss: Loss) -> dict[str, object]:
    """What every host-loss run reports of its senders: sends lost or repeated, calls refused, moves."""
    acked = [body for s in senders for body in s.acknowledged]
    return {
        "acknowledged": len(acked),
        "acknowledged_before_kill": loss.acknowledged_before,
        "in_history": len(history),
        "lost": len(set(acked) - set(history)),
        "duplicated": sum(1 for count in Counter(history).values() if count > 1),
        "refused_calls": sum(s.refused for s in senders),
        "refused_on_the_surviving_host": sum(s.refused for s in senders if len(s.addresses) == 1),
        "refusals": [r for s in senders for r in s.refusals][:10],
        "moved_to_other_gateway": sum(s.moves for s in senders),
        "killed_pids": len(loss.killed_pids),
        "seconds_to_acks_after_kill": loss.seconds_to_acks_after,
    }


def assert_nothing_lost(senders: list[FailoverSender], figures: dict[str, object], lost_host: str) -> None:
    """Every acknowledged send in history once; only the lost host's calls failed, and every sender
    that started there moved on."""
    assert figures["lost"] == 0, figures
    assert figures["duplicated"] == 0, figures
    # No call fails inside the platform (two messaging instances appending to one channel on a
    # JetStream cluster is a retried conflict, not an error).
    assert not [r for s in senders for r in s.refusals if "INTERNAL" in r], figures
    assert figures["refused_on_the_surviving_host"] == 0, figures
    assert all(s.moves >= 1 for s in senders if len(s.addresses) == 2), f"a sender on {lost_host} never moved"


async def close_all(clients: Sequence[ParleyClient | None]) -> None:
    for client in clients:
        if client is not None:
            await client.close()


def _delivered(watcher: FailoverWatcher, acked: list[str]) -> Callable[[], bool]:
    return lambda: set(acked) <= set(watcher.delivered)


async def delivered_to_all(watchers: Sequence[FailoverWatcher], acked: list[str], timeout: float = 120) -> None:
    for watcher in watchers:
        await until(_delivered(watcher, acked), f"every acknowledged send delivered live to {watcher.name}", timeout)


def watcher_figures(watchers: Sequence[FailoverWatcher], acked: list[str]) -> dict[str, object]:
    """What each live watcher saw of the acknowledged sends: all of them, once each, and how often it resumed."""
    twice = sum(1 for w in watchers for count in Counter(w.delivered).values() if count > 1)
    return {
        **{f"delivered_live_{w.name}": len(w.delivered) for w in watchers},
        **{f"not_delivered_live_{w.name}": len(set(acked) - set(w.delivered)) for w in watchers},
        "delivered_live_twice": twice,
        **{f"resumes_{w.name}": w.resumes for w in watchers},
    }
