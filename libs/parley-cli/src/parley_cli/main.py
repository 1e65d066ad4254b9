"""The `parley` command line: platform control and a small chat client."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
from pathlib import Path

import grpc

from parley_cli import admin, audit, chat, devices, keyring, messages, mfa, patch, privacy
from parley_cli.health import check_broker, check_health
from parley_cli.host_address import add_host_address_option
from parley_cli.invocation import parley_as_run
from parley_cli.prompt import PromptInterrupted, ask_secret
from parley_cli.saved_login import as_saved_login_refusal, save_login
from parley_cli.signin import (
    PASSWORDS_COME_FROM,
    SECOND_FACTOR_HOW,
    client_for,
    login_as,
    mfa_hint,
    read_password,
    read_secret,
    second_factor,
    token_path,
    totp_or_recovery,
)
from parley_cli.state import (
    DEFAULT_DATA_DIR,
    STATE_FILE,
    default_data_dir,
    how_to_start,
    leftover_pids,
    load_running_state,
    remember_data_dir,
)
from parley_cli.terminal import shown
from parley_cli.wording import counted
from parley_client import MfaRequired, OutcomeUnknown, ParleyError
from parley_core.logs import quiet_asyncio_tls_notes
from parley_core.nats_connect import NatsUnreachable


async def cmd_up(args: argparse.Namespace) -> int:
    from parley_cli.platform_run import run_platform

    remember_data_dir(args.data_dir)  # the CLI finds this platform from any folder from now on
    return await run_platform(
        args.data_dir,
        gateway_port=args.gateway_port,
        nats_cluster=args.nats_cluster,
        database_url=args.database_url,
        instances=args.instances,
    )


async def cmd_status(args: argparse.Namespace) -> int:
    from parley_core.pki import ensure_pki

    leftovers = leftover_pids(args.data_dir)
    if leftovers:
        # `parley up` is gone but what it started still serves: show that, not "not running".
        state = json.loads((args.data_dir / STATE_FILE).read_text())
        print(
            f"`parley up` (pid {state.get('pid')}) exited without stopping; still running: pids "
            f"{' '.join(map(str, leftovers))} (stop them before the next start)",
            file=sys.stderr,
        )
    else:
        state = load_running_state(args.data_dir)
    pki = ensure_pki(args.data_dir / "pki", ["platform"])
    healthy = True
    print(f"{'service':<16}{'address':<22}{'version':<16}health")
    for name, info in state["services"].items():
        # The stable front addresses are `parley up`'s own: gone with it, each instance still answers on its own.
        instances = info.get("instances") or [info]
        addresses = [i.get("address", info["address"]) for i in instances] if leftovers else [info["address"]]
        # What runs behind the address: every instance's version (two during a roll-out).
        versions = ", ".join(sorted({str(i.get("version") or info.get("version") or "?") for i in instances}))
        for address in addresses:
            status = await check_health(pki, service=name, address=address)
            healthy &= status == "SERVING"
            print(f"{name:<16}{address:<22}{versions:<16}{status}")
    for node in state.get("nats", []):
        # The broker is `parley up`'s too: a dead node is restarted, and shows DOWN until it is.
        url = str(node["url"])
        if node.get("moved_to"):  # handed over to a joined host (`host add --nats-node`), which runs it
            print(f"{node['name']:<16}{'-':<22}{'-':<16}on host {shown(str(node['moved_to']))}")
            continue
        status = await check_broker(args.data_dir, url=url, ca_cert=pki.ca_cert)
        healthy &= status == "SERVING"
        restarts = int(node.get("restarts") or 0)
        note = f"  (restarted {restarts}x)" if restarts else ""
        print(f"{node['name']:<16}{url.rsplit('://', maxsplit=1)[-1]:<22}{'-':<16}{status}{note}")
    if leftovers:
        gateway = state["services"].get("gateway", {}).get("address", "")
        print(
            "platform: UNHEALTHY: the services above still run, but `parley up` is gone and with it the "
            f"addresses clients use (the gateway's {gateway}); stop the pids named and start it again"
        )
        return 1
    print("platform: " + ("healthy" if healthy else "UNHEALTHY"))
    return 0 if healthy else 1


async def cmd_parked(args: argparse.Namespace) -> int:
    from parley_cli.parked import list_parked

    listed = 0
    async for event in list_parked(args.data_dir):
        print(event.line(), flush=listed < 100)
        listed += 1
    if not listed:
        print("no parked events")
    return 0


async def cmd_register(args: argparse.Namespace) -> int:
    async with client_for(args) as client:
        response = await client.register(args.username, read_password(args), invite_code=args.invite)
    print(f"registered {shown(response.username)} ({response.user_id})")
    return 0


async def cmd_login(args: argparse.Namespace) -> int:
    async with client_for(args) as client:
        password = read_password(args)
        totp, recovery = totp_or_recovery(args.totp.strip())
        try:
            response = await client.login(args.username, password, totp_code=totp, recovery_code=recovery)
        except MfaRequired:
            if not (code := second_factor(args)):
                raise SystemExit(f"error: {mfa_hint(args.username)}") from None
            totp, recovery = totp_or_recovery(code)
            response = await client.login(args.username, password, totp_code=totp, recovery_code=recovery)
    save_login(token_path(args, args.username), response)
    print(f"logged in as {args.username}; the CLI renews the session's 15-minute token while the session lasts")
    return 0


def _new_password(username: str) -> str:
    """Typed twice at a terminal (a typo would lock the user out); the next line of piped stdin."""
    missing = "no new password given: type it at the prompt, or give it on the second line of standard input"
    password = read_secret(f"new password for {username}: ", missing=missing)
    if sys.stdin.isatty() and ask_secret("the new password again: ") != password:
        raise SystemExit("error: the two new passwords differ; the password is not changed")
    return password


async def cmd_password(args: argparse.Namespace) -> int:
    """Changes the --as user's own password. Not from $PARLEY_PASSWORD: a script's login password
    there would otherwise be taken for the current one and the first piped line for the new one."""
    async with client_for(args) as client:
        await login_as(args, client)
        missing = "no current password given: type it at the prompt, or give it on the first line of standard input"
        current = read_secret(f"current password for {args.user}: ", missing=missing)
        await client.change_password(current, _new_password(args.user))
    print(f"password of {args.user} changed; every other session of {args.user} is signed out, this one stays")
    return 0


async def cmd_create_channel(args: argparse.Namespace) -> int:
    async with client_for(args) as client:
        await login_as(args, client)
        channel = await client.create_channel(args.name)
    print(f"created #{shown(channel.name)} with id {channel.channel_id}")
    return 0


async def cmd_join(args: argparse.Namespace) -> int:
    async with client_for(args) as client:
        await login_as(args, client)
        if chat.looks_like_an_id(args.channel):
            channel = await client.join_channel(args.channel)
        else:
            channel = await client.join_channel(name=args.channel)
    print(f"joined #{shown(channel.name)} ({counted(len(channel.member_ids), 'member')})")
    return 0


async def cmd_channels(args: argparse.Namespace) -> int:
    async with client_for(args) as client:
        await login_as(args, client)
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
    async with client_for(args) as client:
        await login_as(args, client)
        channel_id, _ = await chat.open_channel(client, args.channel, store=devices.device_store(args))
        message = await client.send(channel_id, args.text, idempotency_key=args.idempotency_key)
    print(f"sent #{message.channel_seq}")
    return 0


async def cmd_history(args: argparse.Namespace) -> int:
    """The newest page, or with --after the page after a message number; a line says how to go on."""
    async with client_for(args) as client:
        await login_as(args, client)
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
    async with client_for(args) as client:
        await login_as(args, client)
        return await chat.interactive(
            client, args.channel, parley=parley_as_run(args), store=devices.device_store(args)
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parley", description="Parley: self-hosted, security-first team chat")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="the platform's data folder (default: $PARLEY_DATA_DIR, else ./.parley when there is one, "
        "else the folder `parley up` last started)",
    )
    parser.add_argument("--gateway", help="gateway host:port (default: from <data-dir>/client.json)")
    parser.add_argument("--as", dest="user", help="act as this logged-in user")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start nats-server and every service; Ctrl-C stops them")
    up.add_argument("--gateway-port", type=int, help="preferred gateway port (default 7443, or a free one)")
    add_host_address_option(up)
    up.add_argument(
        "--nats-cluster",
        type=int,
        default=1,
        metavar="N",
        help="run N nats-server nodes as one JetStream cluster, every stream on 3 of them (N >= 3)",
    )
    up.add_argument(
        "--database-url",
        default=os.environ.get("PARLEY_DATABASE_URL", ""),
        metavar="URL",
        help="keep the archive in PostgreSQL (postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE); the data folder "
        "remembers it, so later starts need no flag (default: $PARLEY_DATABASE_URL, else SQLite in the data folder)",
    )
    up.add_argument(
        "--instances",
        default=os.environ.get("PARLEY_INSTANCES", ""),
        metavar="SERVICE=N,...",
        help="run several instances of gateway, messaging or auth behind their addresses, e.g. messaging=2,gateway=2 "
        "(default: $PARLEY_INSTANCES, else one of each)",
    )
    up.set_defaults(run=cmd_up)
    sub.add_parser("status", help="health of every service and of nats-server").set_defaults(run=cmd_status)
    sub.add_parser("parked", help="poison events that consumers set aside").set_defaults(run=cmd_parked)

    register = sub.add_parser(
        "register",
        help="create an account (open or invitation registration)",
        description=f"Create an account; the password is read from {PASSWORDS_COME_FROM}.",
    )
    register.add_argument("username")
    register.add_argument("--invite", default="", help="your invitation code (PARLEY_REGISTRATION=invite)")
    register.set_defaults(run=cmd_register)
    login = sub.add_parser(
        "login",
        help="log in and keep the session (renewed as needed, up to 30 days)",
        description="Log in and keep the session's tokens in <data-dir>/cli/ (the CLI renews the 15-minute "
        "access token as needed, for up to 30 days); the password is read from "
        f"{PASSWORDS_COME_FROM}. An account with "
        f"two-factor authentication also needs {SECOND_FACTOR_HOW}: --totp CODE, or asked after the password "
        "(the next line of standard input, or $PARLEY_MFA_CODE).",
    )
    login.add_argument("username")
    login.add_argument(
        "--totp",
        default="",
        metavar="CODE",
        help="the code from your authenticator app, or a recovery code (xxxx-xxxx-xxxx-xxxx, each works once)",
    )
    login.set_defaults(run=cmd_login)
    password = sub.add_parser(
        "password",
        help="change your password (with --as USER)",
        description="Change your own password, as `parley --as USER password`: asks for the current one, "
        "then the new one twice; from standard input, the current password on the first line and the new one "
        "on the second ($PARLEY_PASSWORD is not used here). Your other sessions are signed out.",
    )
    password.set_defaults(run=cmd_password)

    create = sub.add_parser("create-channel", help="create a channel")
    create.add_argument("name")
    create.set_defaults(run=cmd_create_channel)
    join = sub.add_parser("join", help="join a channel by id, or by name when one channel you may join has it")
    join.add_argument("channel", help="channel id or name")
    join.set_defaults(run=cmd_join)
    sub.add_parser("channels", help="the channels you are in").set_defaults(run=cmd_channels)
    send = sub.add_parser("send", help="send one message")
    send.add_argument("channel", help="channel id or name")
    send.add_argument("text")
    send.add_argument("--idempotency-key", help=messages.AGAIN_HELP)
    send.set_defaults(run=cmd_send)
    history = sub.add_parser("history", help="print a channel's newest messages (`parley older` pages back)")
    history.add_argument("channel", help="channel id or name")
    history.add_argument(
        "--after", type=int, default=0, help="the oldest messages after this number instead of the newest"
    )
    history.add_argument("--limit", type=int, default=100, help="how many messages (default 100)")
    history.set_defaults(run=cmd_history)
    chat_cmd = sub.add_parser("chat", help="chat in a channel: type lines to send, see others live")
    chat_cmd.add_argument("channel", help="channel id or name")
    chat_cmd.set_defaults(run=cmd_chat)
    admin.add_commands(sub)
    audit.add_commands(sub)
    from parley_cli import backup  # storage backups (issue 5)

    backup.add_commands(sub)
    patch.add_commands(sub)
    messages.add_commands(sub)
    devices.add_commands(sub)  # issue 4: E2EE devices, fingerprints, verification
    mfa.add_commands(sub)  # issue 3: a user's own MFA settings
    privacy.add_commands(sub)  # fix-d: export and erasure of a user's data
    keyring.add_commands(sub)  # storage's key-encryption key rotation
    from parley_cli import hosts  # a fleet of several hosts (issue 18)

    hosts.add_commands(sub)
    from parley_cli import report  # signed compliance reports for auditors

    report.add_commands(sub)
    from parley_cli import quarantine  # the consumer guard's quarantined services

    quarantine.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)  # Ctrl-C before the command runs: entry.run
    if args.command == "admin" and args.user:
        # Taking it silently would let an operator believe the change was made, and audited, as that user.
        parser.error(
            f"--as {args.user}: `parley admin` commands act as the platform identity (the operator "
            "credentials in the data folder), never as a user; run them without --as"
        )
    args.data_dir_given = args.data_dir is not None  # hints repeat it only when it was named
    if args.data_dir is None:
        up = args.command == "up"  # starts ./.parley (or $PARLEY_DATA_DIR), never a remembered folder
        args.data_dir = Path(os.environ.get("PARLEY_DATA_DIR") or DEFAULT_DATA_DIR) if up else default_data_dir()
    quiet_asyncio_tls_notes()
    try:
        code = asyncio.run(args.run(args))
        sys.stdout.flush()  # a reader that left (`| head`) shows up here, not at interpreter exit
    except BrokenPipeError:
        # The reader of our output went away: stop quietly, as other Unix tools do, and keep the
        # interpreter's final flush from printing a traceback of its own.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141  # 128 + SIGPIPE, what a shell reports for a tool killed by it
    except OutcomeUnknown as exc:
        print(f"error: {shown(exc.message)} ({exc.code.name})", file=sys.stderr)
        if exc.idempotency_key:
            print(
                f"`--idempotency-key {exc.idempotency_key}` on the same command makes it again, never twice",
                file=sys.stderr,
            )
        code = 1
    except ParleyError as refused:
        said = as_saved_login_refusal(args.user, refused) if args.user and args.command != "login" else refused
        print(f"error: {shown(said.message)} ({said.code.name})", file=sys.stderr)
        if said.code == grpc.StatusCode.UNAVAILABLE:
            print(
                f"is the platform running? {how_to_start(args.data_dir)} starts it; `parley status` shows what is down",
                file=sys.stderr,
            )
        code = 1
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except NatsUnreachable as exc:
        print(f"error: {exc}; is the platform running? `parley status` shows what is down", file=sys.stderr)
        code = 1
    except PromptInterrupted:
        print("parley: interrupted; nothing was sent", file=sys.stderr)
        code = 130
    except KeyboardInterrupt:  # the command said what it left undone, if anything (backup create)
        code = 130
    raise SystemExit(code)
