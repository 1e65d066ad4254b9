"""The interactive chat loop: lines typed are sent, others' messages are printed live."""

from __future__ import annotations

import asyncio
import sys
import threading
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
    raise SystemExit(f"{reference!r} is not one of your channels (yours: {names}); create it, or join it by id first")


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

    async def show_incoming() -> int:
        try:
            async for message in stream:
                if message.channel_seq > seen:
                    print(format_message(message), flush=True)
        except ParleyError as exc:
            print(f"-- live stream ended: {exc.message}; leaving --", flush=True)
            return 1
        return 0

    async def send_typed() -> int:
        lines = _stdin_lines()
        while (line := await lines.get()) is not None:
            text = line.rstrip("\n")
            if text.strip():
                try:
                    await client.send(channel_id, text)
                except ParleyError as exc:
                    print(f"not sent: {exc.message}", flush=True)
        return 0

    incoming = asyncio.create_task(show_incoming())
    typed = asyncio.create_task(send_typed())
    try:
        done, _ = await asyncio.wait({incoming, typed}, return_when=asyncio.FIRST_COMPLETED)
        return next(iter(done)).result()
    finally:
        stream.cancel()
        incoming.cancel()
        typed.cancel()


def _stdin_lines() -> asyncio.Queue[str | None]:
    """Lines typed, read by a daemon thread so that leaving never waits for one more Enter."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line)
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=read, name="stdin", daemon=True).start()
    return queue
