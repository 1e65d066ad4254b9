"""A sender that moves to the next gateway when its own is lost, and history read whole: the
host-loss fault tests' clients."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from parley_client import ParleyClient, ParleyError
from parley_testing.stack import PASSWORD


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


async def all_bodies(client: ParleyClient, channel_id: str) -> list[str]:
    bodies: list[str] = []
    after = 0
    while True:
        page = await client.history(channel_id, after_seq=after, limit=500)
        bodies.extend(m.body for m in page.messages)
        if not page.has_more:
            return bodies
        after = page.messages[-1].channel_seq
