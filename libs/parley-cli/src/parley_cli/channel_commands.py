"""`parley create-channel`, `join`, `channels`, `send`, `history` and `chat`: the small chat
client's commands, each as the `--as` user."""

from __future__ import annotations

import argparse
import shlex

from parley_cli import chat, devices, messages
from parley_cli.arguments import command
from parley_cli.invocation import parley_as_run
from parley_cli.signin import signed_in
from parley_cli.state import gateway_gone
from parley_cli.terminal import shown
from parley_cli.wording import counted


async def cmd_create_channel(args: argparse.Namespace) -> int:
    async with signed_in(args) as client:
        channel = await client.create_channel(args.name)
    print(f"created #{shown(channel.name)} with id {channel.channel_id}")
    return 0


async def cmd_join(args: argparse.Namespace) -> int:
    async with signed_in(args) as client:
        mine = {c.channel_id for c in await client.my_channels()}  # joining one of them again changes nothing
        if chat.looks_like_an_id(args.channel):
            channel = await client.join_channel(args.channel)
        else:
            channel = await client.join_channel(name=args.channel)
    members = counted(len(channel.member_ids), "member")
    if channel.channel_id in mine:
        print(f"already a member of #{shown(channel.name)} ({members})")
    else:
        print(f"joined #{shown(channel.name)} ({members})")
    return 0


async def cmd_channels(args: argparse.Namespace) -> int:
    async with signed_in(args) as client:
        channels = await client.my_channels()
        if not channels:
            print("you are in no channel yet: `parley create-channel NAME` or `parley join ID`")
        people = chat.People(client)
        await people.learn(u for c in channels if c.direct for u in c.member_ids)
        for channel in channels:
            label = chat.channel_label(channel, people.names, me=client.user_id)
            print(f"{channel.channel_id}  {label}  members={len(channel.member_ids)}  messages={channel.last_seq}")
    return 0


async def cmd_send(args: argparse.Namespace) -> int:
    async with signed_in(args) as client:
        channel_id, _ = await chat.open_channel(client, args.channel, store=devices.device_store(args))
        message = await client.send(channel_id, args.text, idempotency_key=args.idempotency_key)
    print(f"sent #{message.channel_seq}")
    return 0


async def cmd_history(args: argparse.Namespace) -> int:
    """The newest page, or with --after the page after a message number; a line says how to go on."""
    async with signed_in(args) as client:
        channel_id, _ = await chat.open_channel(client, args.channel, store=devices.device_store(args))
        if args.after:
            page = await client.history(channel_id, after_seq=args.after, limit=args.limit)
        else:
            page = await client.latest(channel_id, limit=args.limit)
        if not page.messages:
            print("(no messages)")
        people = chat.People(client)
        await people.learn_from(page.messages)
        for message in page.messages:
            print(chat.format_message(message, people.names))
        if page.has_more and page.messages:
            if args.after:
                after = page.messages[-1].channel_seq
                newer = f"{parley_as_run(args)} history {shlex.quote(args.channel)} --after {after}"
                print(f"-- newer: {shown(newer)} --")
            else:
                print(chat.older_hint(parley_as_run(args), args.channel, page.messages[0].channel_seq))
    return 0


async def cmd_chat(args: argparse.Namespace) -> int:
    async with signed_in(args) as client:
        return await chat.interactive(
            client,
            args.channel,
            parley=parley_as_run(args),
            store=devices.device_store(args),
            gone=lambda: gateway_gone(args.data_dir, args.gateway),
        )


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    create = command(sub, "create-channel", cmd_create_channel, help="create a channel")
    create.add_argument("name")
    join = command(sub, "join", cmd_join, help="join a channel by id, or by name when one channel you may join has it")
    join.add_argument("channel", help="channel id or name")
    command(sub, "channels", cmd_channels, help="the channels you are in")
    send = command(sub, "send", cmd_send, help="send one message")
    send.add_argument("channel", help="channel id or name")
    send.add_argument("text")
    send.add_argument("--idempotency-key", help=messages.AGAIN_HELP)
    history = command(sub, "history", cmd_history, help="print a channel's newest messages (`parley older` pages back)")
    history.add_argument("channel", help="channel id or name")
    history.add_argument(
        "--after", type=int, default=0, help="the oldest messages after this number instead of the newest"
    )
    history.add_argument("--limit", type=int, default=100, help="how many messages (default 100)")
    chat_cmd = command(sub, "chat", cmd_chat, help="chat in a channel: type lines to send, see others live")
    chat_cmd.add_argument("channel", help="channel id or name")
