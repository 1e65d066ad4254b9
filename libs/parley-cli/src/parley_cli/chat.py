"""The interactive chat loop: lines typed are sent, others' messages are printed live."""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime

from parley.messaging.v1.messaging_pb2 import ChatMessage

from parley_client import ParleyClient, ParleyError


def format_message(message: ChatMessage) -> str:
    when = datetime.fromtimestamp(message.sent_at.seconds).strftime("%H:%M:%S")
    return f"[{message.channel_seq:>5}] {when} {message.sender_name or message.sender_id[:8]}: {message.body}"


async def resolve_channel(client: ParleyClient, reference: str) -> str:
    """Accept a channel id or the name of a channel the user is in."""
    channels = await client.my_channels()
    for channel in channels:
        if reference in (channel.channel_id, channel.name):
            return channel.channel_id
    names = ", ".join(f"#{c.name}" for c in channels) or "none"
    raise SystemExit(f"you are not in a channel named {reference!r} (yours: {names}); create or join it first")


async def interactive(client: ParleyClient, reference: str) -> int:
    channel_id = await resolve_channel(client, reference)
    stream = client.subscribe([channel_id])
    await stream.ready()
    page = await client.history(channel_id, limit=20)
    seen = 0
    for message in page.messages:
        print(format_message(message))
        seen = max(seen, message.channel_seq)
    print("-- live; type a message and press Enter, Ctrl-D to leave --", flush=True)

    async def show_incoming() -> None:
        async for message in stream:
            if message.channel_seq > seen:
                print(format_message(message), flush=True)

    async def send_typed() -> None:
        loop = asyncio.get_running_loop()
        while (line := await loop.run_in_executor(None, sys.stdin.readline)) != "":
            text = line.rstrip("\n")
            if text.strip():
                try:
                    await client.send(channel_id, text)
                except ParleyError as exc:
                    print(f"not sent: {exc.message}", flush=True)

    incoming = asyncio.create_task(show_incoming())
    try:
        await send_typed()
    finally:
        stream.cancel()
        incoming.cancel()
    return 0
