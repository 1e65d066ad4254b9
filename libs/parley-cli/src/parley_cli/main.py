"""The `parley` command line: platform control and a small chat client."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import grpc

from parley_cli import (
    account_commands,
    admin,
    audit,
    channel_commands,
    devices,
    keyring,
    messages,
    mfa,
    patch,
    privacy,
)
from parley_cli.arguments import add_database_url_option, command
from parley_cli.health import check_broker, check_health
from parley_cli.host_address import add_host_address_option
from parley_cli.joined_host import joined_host, joined_host_status
from parley_cli.prompt import PromptInterrupted
from parley_cli.saved_login import as_saved_login_refusal
from parley_cli.state import (
    DEFAULT_DATA_DIR,
    default_data_dir,
    last_state,
    leftover_pids,
    load_running_state,
    remember_data_dir,
    unavailable_hint,
)
from parley_cli.terminal import shown
from parley_client import OutcomeUnknown, ParleyError
from parley_core.logs import quiet_asyncio_tls_notes
from parley_core.nats_connect import NatsUnreachable


async def cmd_up(args: argparse.Namespace) -> int:
    from parley_cli.platform_run import run_platform

    remember_data_dir(args.data_dir)  # the CLI finds this platform from any folder from now on
    return await run_platform(
        args.data_dir,
        gateway_port=args.gateway_port,
        web_port=args.web_port,
        nats_cluster=args.nats_cluster,
        database_url=args.database_url,
        instances=args.instances,
    )


async def cmd_status(args: argparse.Namespace) -> int:
    from parley_core.pki import ensure_pki

    leftovers = leftover_pids(args.data_dir)
    if leftovers:
        # `parley up` is gone but what it started still serves: show that, not "not running".
        state = last_state(args.data_dir)
        print(
            f"`parley up` (pid {state.get('pid')}) exited without stopping; still running: pids "
            f"{' '.join(map(str, leftovers))} (stop them before the next start)",
            file=sys.stderr,
        )
    else:
        if joined := joined_host(args.data_dir):
            return await joined_host_status(joined)
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

    up = command(sub, "up", cmd_up, help="start nats-server and every service; Ctrl-C stops them")
    up.add_argument(
        "--gateway-port",
        type=int,
        help="preferred gateway port (default: the port of this folder's last run, else 7443, else a free one)",
    )
    up.add_argument(
        "--web-port",
        type=int,
        help="preferred port of the web app (default: the port of this folder's last run, else 8443, else a free one)",
    )
    add_host_address_option(up)
    up.add_argument(
        "--nats-cluster",
        type=int,
        default=1,
        metavar="N",
        help="run N nats-server nodes as one JetStream cluster, every stream on 3 of them (N >= 3)",
    )
    add_database_url_option(
        up,
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
    command(sub, "status", cmd_status, help="health of every service and of nats-server")
    command(sub, "parked", cmd_parked, help="poison events that consumers set aside")

    account_commands.add_commands(sub)

    channel_commands.add_commands(sub)
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
    from parley_cli import kubernetes_secrets  # the Secrets deploy/kubernetes mounts (issue 18)

    kubernetes_secrets.add_commands(sub)
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
            print(unavailable_hint(args.data_dir, args.gateway), file=sys.stderr)
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
