"""A stolen reader's credential flooding a stream with consumers, for the consumer guard's tests."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client

from parley_core import nats_accounts

FLOOD_ATTEMPTS = 1500  # more than a stream's 1,000 slots
IN_FLIGHT = 50  # creations the attacker has in flight at once
ATTACK_TIMEOUT_S = 2.0


@dataclass
class Flood:
    made: int = 0
    refused: int = 0
    first_refusal: str = ""


async def flood_consumers(
    client: Client, service: str, stream: str, *, flood: Flood | None = None, attempts: int = FLOOD_ATTEMPTS
) -> Flood:
    """Durable consumers named as the attacker likes, `IN_FLIGHT` at a time, until refused."""
    flood = flood if flood is not None else Flood()
    prefix = nats_accounts.js_api_prefix(service)

    async def create(n: int) -> None:
        name = f"{service.replace('-', '_')}_flood{n}"
        config = {"name": name, "durable_name": name, "ack_policy": "explicit", "filter_subject": ">"}
        body = json.dumps({"stream_name": stream, "config": config}).encode()
        try:
            answer = json.loads(
                (await client.request(f"{prefix}.CONSUMER.CREATE.{stream}.{name}", body, timeout=ATTACK_TIMEOUT_S)).data
            )
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):  # quarantined: it may no longer ask
            flood.refused += 1
            flood.first_refusal = flood.first_refusal or "no answer (permission refused)"
            return
        if "error" in answer:
            flood.refused += 1
            flood.first_refusal = flood.first_refusal or answer["error"]["description"]
        else:
            flood.made += 1

    for start in range(0, attempts, IN_FLIGHT):
        await asyncio.gather(*(create(n) for n in range(start, min(start + IN_FLIGHT, attempts))))
        if flood.refused:
            break
    return flood
