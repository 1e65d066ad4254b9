"""`parley edit`, `parley redact`, `parley versions` and `parley older`: acting on earlier messages."""

from __future__ import annotations

import argparse

from parley_cli import chat
from parley_client import ParleyClient


async def _logged_in(args: argparse.Namespace) -> ParleyClient:
    from parley_cli.main import _client, _login_as  # main imports this module: resolve late

    client = _client(args)
    await _login_as(args, client)
    return client


async def cmd_edit(args: argparse.Namespace) -> int:
    async with await _logged_in(args) as client:
        channel_id = await chat.resolve_channel(client, args.channel)
        message = await client.edit(channel_id, args.number, args.text)
    print(f"edited #{message.channel_seq} ({message.edit_count} edits)")
    return 0


async def cmd_redact(args: argparse.Namespace) -> int:
    async with await _logged_in(args) as client:
        channel_id = await chat.resolve_channel(client, args.channel)
        message = await client.redact(channel_id, args.number, reason=args.reason)
    print(f"redacted #{message.channel_seq}")
    return 0


async def cmd_versions(args: argparse.Namespace) -> int:
    async with await _logged_in(args) as client:
        channel_id = await chat.resolve_channel(client, args.channel)
        for n, body in enumerate(await client.message_versions(channel_id, args.number), start=1):
            print(f"v{n}: {body}")
    return 0


async def cmd_older(args: argparse.Namespace) -> int:
    async with await _logged_in(args) as client:
        channel_id = await chat.resolve_channel(client, args.channel)
        page = await client.history(channel_id, before_seq=args.before, limit=args.limit)
        for message in page.messages:
            print(chat.format_message(message))
        if page.has_more and page.messages:
            print(f"-- older: parley older {args.channel} {page.messages[0].channel_seq} --")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    edit = sub.add_parser("edit", help="replace the text of one of your messages")
    edit.add_argument("channel", help="channel id or name")
    edit.add_argument("number", type=int, help="the message's number, shown in [brackets]")
    edit.add_argument("text")
    edit.set_defaults(run=cmd_edit)
    redact = sub.add_parser("redact", help="remove a message's content (yours, or any as the channel's moderator)")
    redact.add_argument("channel", help="channel id or name")
    redact.add_argument("number", type=int)
    redact.add_argument("--reason", default="")
    redact.set_defaults(run=cmd_redact)
    versions = sub.add_parser("versions", help="every text a message had (channel moderators)")
    versions.add_argument("channel", help="channel id or name")
    versions.add_argument("number", type=int)
    versions.set_defaults(run=cmd_versions)
    older = sub.add_parser("older", help="the page of history before a message number")
    older.add_argument("channel", help="channel id or name")
    older.add_argument("before", type=int, help="show messages before this number")
    older.add_argument("--limit", type=int, default=20)
    older.set_defaults(run=cmd_older)
