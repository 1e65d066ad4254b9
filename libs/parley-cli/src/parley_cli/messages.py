"""Conversation commands: edits, redactions, threads, reactions, membership and channel kinds."""

from __future__ import annotations

import argparse

from parley.messaging.v1.messaging_pb2 import ChatMessage

from parley_cli import chat, devices
from parley_cli.arguments import command
from parley_cli.invocation import parley_as_run
from parley_cli.signin import signed_in
from parley_cli.terminal import shown
from parley_cli.wording import counted


async def cmd_edit(args: argparse.Namespace) -> int:
    async with signed_in(args) as client:
        channel_id, _ = await chat.open_channel(client, args.channel, store=devices.device_store(args))
        message = await client.edit(channel_id, args.number, args.text)
    print(f"edited #{message.channel_seq} ({counted(message.edit_count, 'edit')})")
    return 0


async def cmd_redact(args: argparse.Namespace) -> int:
    async with signed_in(args) as client:
        channel_id = await chat.resolve_channel(client, args.channel)
        message = await client.redact(channel_id, args.number, reason=args.reason)
    print(f"redacted #{message.channel_seq}")
    return 0


async def cmd_versions(args: argparse.Namespace) -> int:
    async with signed_in(args) as client:
        channel_id = await chat.resolve_channel(client, args.channel)
        bodies = await client.message_versions(channel_id, args.number)
    # A message always has its post's text until a redaction clears them all (messaging.proto:
    # "empty once the message is redacted"); an expired or erased one is NOT_FOUND instead.
    if not bodies:
        print(f"#{args.number} was redacted: no earlier texts are kept")
    for n, body in enumerate(bodies, start=1):
        print(f"v{n}: {shown(body)}")
    return 0


async def cmd_older(args: argparse.Namespace) -> int:
    async with signed_in(args) as client:
        channel_id, _ = await chat.open_channel(client, args.channel, store=devices.device_store(args))
        page = await client.history(channel_id, before_seq=args.before, limit=args.limit)
        people = chat.People(client)
        await people.learn_from(page.messages)
        for message in page.messages:
            print(chat.format_message(message, people.names))
        if page.has_more and page.messages:
            print(chat.older_hint(parley_as_run(args), args.channel, page.messages[0].channel_seq))
    return 0


async def cmd_member(args: argparse.Namespace) -> int:
    async with signed_in(args) as client:
        channel = await chat.find_channel(client, args.channel)
        user_id = await chat.user_id_of(client, args.person)
        if args.command == "invite" and user_id in channel.member_ids:  # nothing to do: said, not "done"
            members = counted(len(channel.member_ids), "member")
            print(f"invite: {shown(args.person)} is already a member of #{shown(channel.name)} ({members})")
            return 0
        action = {"invite": client.invite, "kick": client.kick, "ban": client.ban, "unban": client.unban}
        channel = await action[args.command](channel.channel_id, user_id)
    print(f"{args.command}: done; #{shown(channel.name)} has {counted(len(channel.member_ids), 'member')}")
    return 0


async def cmd_invitations(args: argparse.Namespace) -> int:
    async with signed_in(args) as client:
        pending = await client.invitations()
        people = chat.People(client)
        await people.learn(i.invited_by for i in pending)
    if not pending:
        print("no pending invitations")
    for invitation in pending:
        kind = " (private)" if invitation.private else ""
        who = chat.person(invitation.invited_by, people.names)
        print(f"{invitation.channel_id}  #{shown(invitation.channel_name)}{kind}  invited by {who}")
    if pending:
        print(f"-- accept: {shown(parley_as_run(args))} join ID; decline: {shown(parley_as_run(args))} decline ID --")
    return 0


async def cmd_decline(args: argparse.Namespace) -> int:
    """Declines by channel id, or by the name of exactly one channel the user is invited to."""
    async with signed_in(args) as client:
        pending = await client.invitations()
        named = [i for i in pending if args.channel in (i.channel_id, i.channel_name)]
        if len(named) > 1:
            ids = ", ".join(i.channel_id for i in named)
            raise SystemExit(f"error: several invitations are to #{shown(args.channel)} ({ids}); give the id")
        await client.decline_invitation(named[0].channel_id if named else args.channel)
    print(f"declined the invitation to #{shown(named[0].channel_name) if named else shown(args.channel)}")
    return 0


async def cmd_leave(args: argparse.Namespace) -> int:
    async with signed_in(args) as client:
        channel = await client.leave_channel(await chat.resolve_channel(client, args.channel))
    print(f"left #{shown(channel.name)}")
    return 0


async def cmd_dm(args: argparse.Namespace) -> int:
    async with signed_in(args) as client:
        user_ids = [await chat.user_id_of(client, u) for u in args.users]
        channel = await client.create_direct(user_ids, encrypted=args.encrypted, idempotency_key=args.idempotency_key)
    print(f"direct conversation {channel.channel_id}")
    return 0


async def cmd_reply(args: argparse.Namespace) -> int:
    async with signed_in(args) as client:
        channel_id, _ = await chat.open_channel(client, args.channel, store=devices.device_store(args))
        message = await client.reply(channel_id, args.number, args.text, idempotency_key=args.idempotency_key)
    print(f"sent #{message.channel_seq} in the thread of #{args.number}")
    return 0


async def cmd_thread(args: argparse.Namespace) -> int:
    async with signed_in(args) as client:
        channel_id, _ = await chat.open_channel(client, args.channel, store=devices.device_store(args))
        thread = await client.thread(channel_id, args.number)
        people = chat.People(client)
        await people.learn_from((thread.root, *thread.replies))
    for message in (thread.root, *thread.replies):
        print(chat.format_message(message, people.names))
    return 0


WHO = "a user id, or a username: of someone who shares a channel with you (any account's for owners and admins)"


def reactions_line(message: ChatMessage) -> str:
    return " ".join(f"{shown(r.emoji)}x{len(r.user_ids)}" for r in message.reactions) or "no reactions"


def reacted_line(message: ChatMessage, emoji: str, *, removed: bool) -> str:
    """What `parley react` did, then the message's reactions. A `:shortcode:` is stored as its
    emoji (messaging's reactions.py knows the list), so its count shows among all of them."""
    number = message.channel_seq
    did = f"removed your {shown(emoji)} from #{number}" if removed else f"reacted {shown(emoji)} to #{number}"
    same = [len(r.user_ids) for r in message.reactions if r.emoji == emoji]
    if same:
        did += f" ({same[0]} so far)"
    others = [r for r in message.reactions if r.emoji != emoji]
    if not others and same:
        return did
    return f"{did}; reactions now: {reactions_line(message)}"


async def cmd_react(args: argparse.Namespace) -> int:
    async with signed_in(args) as client:
        channel_id = await chat.resolve_channel(client, args.channel)
        message = await client.react(channel_id, args.number, args.emoji, remove=args.remove)
    print(reacted_line(message, args.emoji, removed=args.remove))
    return 0


async def cmd_create_channel(args: argparse.Namespace) -> int:
    async with signed_in(args) as client:
        # A second channel of a name makes the name ambiguous in every later command; a retry with
        # its key may find its own first attempt, so it is not asked.
        if not args.allow_duplicate and not args.idempotency_key:
            same = [c.channel_id for c in await client.my_channels() if c.name == args.name and not c.direct]
            if same:
                raise SystemExit(
                    f"error: you already have #{shown(args.name)} ({', '.join(same)}); use it by name, or give "
                    f"--allow-duplicate to create a second #{shown(args.name)} (then name them by id)"
                )
        channel = await client.create_channel(
            args.name,
            encrypted=args.encrypted,
            private=args.private,
            hide_history_before_join=args.hide_history,
            idempotency_key=args.idempotency_key,
        )
    print(f"created #{shown(channel.name)} with id {channel.channel_id}")
    return 0


# A command whose outcome was unknown names its key; the same command with it never acts twice.
AGAIN_HELP = "the key of an earlier call whose outcome was unknown: makes it again, never twice (default: a new one)"


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    edit = command(sub, "edit", cmd_edit, help="replace the text of one of your messages")
    edit.add_argument("channel", help="channel id or name")
    edit.add_argument("number", type=int, help="the message's number, shown in [brackets]")
    edit.add_argument("text")
    redact = command(
        sub, "redact", cmd_redact, help="remove a message's content (yours, or any as the channel's moderator)"
    )
    redact.add_argument("channel", help="channel id or name")
    redact.add_argument("number", type=int)
    redact.add_argument("--reason", default="")
    versions = command(sub, "versions", cmd_versions, help="every text a message had (channel moderators)")
    versions.add_argument("channel", help="channel id or name")
    versions.add_argument("number", type=int)
    older = command(sub, "older", cmd_older, help="the page of history before a message number")
    older.add_argument("channel", help="channel id or name")
    older.add_argument("before", type=int, help="show messages before this number")
    older.add_argument("--limit", type=int, default=20)
    for name, text in (
        ("invite", "invite a user to a channel"),
        ("kick", "remove a member (moderators)"),
        ("ban", "remove a member and keep them out (moderators)"),
        ("unban", "let a banned user back (moderators)"),
    ):
        member = command(sub, name, cmd_member, help=text)
        member.add_argument("channel", help="channel id or name")
        member.add_argument("person", metavar="USER", help=WHO)
    command(sub, "invitations", cmd_invitations, help="your pending invitations to channels")
    decline = command(sub, "decline", cmd_decline, help="decline an invitation to a channel")
    decline.add_argument("channel", help="channel id, or the name of the channel you are invited to")
    leave = command(sub, "leave", cmd_leave, help="leave a channel")
    leave.add_argument("channel", help="channel id or name")
    dm = command(sub, "dm", cmd_dm, help="start a direct conversation with 1 to 7 users")
    dm.add_argument("users", nargs="+", help=WHO)
    dm.add_argument("--encrypted", action="store_true", help="end-to-end encrypted (SDK clients only)")
    dm.add_argument("--idempotency-key", help=AGAIN_HELP)
    reply = command(sub, "reply", cmd_reply, help="reply in the thread of a message")
    reply.add_argument("channel", help="channel id or name")
    reply.add_argument("number", type=int)
    reply.add_argument("text")
    reply.add_argument("--idempotency-key", help=AGAIN_HELP)
    thread = command(sub, "thread", cmd_thread, help="a message and its replies")
    thread.add_argument("channel", help="channel id or name")
    thread.add_argument("number", type=int)
    react = command(
        sub,
        "react",
        cmd_react,
        help="react to a message with an emoji",
        description="React with one emoji from Unicode's emoji list (👍, 👍🏽, 🇫🇷, 👨‍👩‍👧) or its :shortcode: "
        "(:thumbs_up:, :+1:, :tada:, :heart:); words and several emoji are refused.",
    )
    react.add_argument("channel", help="channel id or name")
    react.add_argument("number", type=int)
    react.add_argument(
        "emoji", help="one emoji, such as 👍, or its :shortcode:, such as :thumbs_up: or :+1: (other text is refused)"
    )
    react.add_argument("--remove", action="store_true", help="take the reaction back")
    # The foundation's create-channel, with this channel kinds.
    create = sub.choices["create-channel"]
    create.add_argument("--private", action="store_true", help="members join by invitation only")
    create.add_argument("--encrypted", action="store_true", help="end-to-end encrypted (SDK clients only)")
    create.add_argument("--hide-history", action="store_true", help="members see only what came after they joined")
    create.add_argument("--idempotency-key", help=AGAIN_HELP)
    create.add_argument(
        "--allow-duplicate", action="store_true", help="create it even when you have a channel of that name already"
    )
    create.set_defaults(run=cmd_create_channel)
