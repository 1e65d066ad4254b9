"""Log in, send a message to a channel and read it back live: `python examples/hello.py alice`."""

import asyncio
import getpass
import os
import sys
from pathlib import Path

from parley_client import ClientConfig, ParleyClient, ParleyError

DATA_DIR = Path(os.environ.get("PARLEY_DATA_DIR", ".parley"))  # what `make run` started


async def main(username: str, password: str) -> None:
    async with ParleyClient.from_config(ClientConfig.from_data_dir(DATA_DIR)) as client:
        await client.login(username, password)
        client.keep_logged_in()  # renew the 15-minute access token while the session lasts
        mine = {c.name: c for c in await client.my_channels()}
        channel = mine.get("hello") or await client.create_channel("hello")
        live = client.subscribe([channel.channel_id])
        await live.ready()  # from here on nothing sent to the channel is missed
        await client.send(channel.channel_id, f"hello from {username}")
        async for message in live:
            print(f"#{message.channel_seq} {message.sender_name}: {message.body}")
            break  # the message just sent; keep iterating to follow the channel


if __name__ == "__main__":
    user = sys.argv[1] if len(sys.argv) > 1 else "alice"
    try:
        asyncio.run(main(user, os.environ.get("PARLEY_PASSWORD") or getpass.getpass(f"password for {user}: ")))
    except ParleyError as exc:  # a wrong password, the platform down: one line saying so
        sys.exit(f"{user}: {exc.message} ({exc.code.name})")
