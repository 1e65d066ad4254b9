"""A client that sends all the time and counts: how tests show an upgrade loses nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from parley_client.client import ParleyClient
from parley_client.errors import ParleyError
from parley_testing.stack import PASSWORD
from parley_testing.waiting import eventually


@dataclass
class Traffic:
    acknowledged: int = 0
    failures: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


async def send_continuously(client: ParleyClient, channel_id: str, traffic: Traffic) -> None:
    """One message after another, each waited for; any refusal is a failed request."""
    n = 0
    while not traffic.stop.is_set():
        n += 1
        try:
            await client.send(channel_id, f"message {n}", idempotency_key=f"k-{n}")
            traffic.acknowledged += 1
        except ParleyError as error:
            traffic.failures.append(f"message {n}: {error}")


@asynccontextmanager
async def sending(client: ParleyClient, channel_id: str) -> AsyncIterator[Traffic]:
    """`send_continuously` all through the block; on its end the sender stops (after its send in flight)."""
    traffic = Traffic()
    sender = asyncio.create_task(send_continuously(client, channel_id, traffic))
    try:
        yield traffic
    finally:
        traffic.stop.set()
        await sender


async def sender_channel(client: ParleyClient, user: str, channel: str) -> str:
    """`user` registered and logged in on `client`, with a new channel of theirs to send to: its id."""
    await client.register(user, PASSWORD)
    await client.login(user, PASSWORD)
    return (await client.create_channel(channel)).channel_id


async def all_archived(client: ParleyClient, channel_id: str, traffic: Traffic, timeout: float = 120) -> None:
    """History comes to hold every message `traffic` had acknowledged (storage archives them after)."""

    async def archived() -> int | None:
        count = await history_count(client, channel_id)
        return count if count >= traffic.acknowledged else None

    assert await eventually(archived, "every acknowledged message in history", timeout) == traffic.acknowledged


async def history_count(client: ParleyClient, channel_id: str) -> int:
    total, after = 0, 0
    while True:
        page = await client.history(channel_id, after_seq=after, limit=100)
        if not page.messages:
            return total
        total += len(page.messages)
        after = page.messages[-1].channel_seq
