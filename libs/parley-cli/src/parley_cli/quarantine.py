"""Services whose NATS credential kept flooding streams with consumers: `parley quarantine [lift]`.

The platform's consumer guard (parley_core.consumer_guard) puts a service here; `parley up`
renders nats-server's config with that service's account unable to make any consumer but its
declared durables and reloads the server (its connections stay, it keeps reading). An operator
looks into it (whose credential? `secrets/nats-passwords.json` may have leaked: rotate it), then
lifts it: the running `parley up` notices the file changed and reloads nats-server again.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

from parley_cli.arguments import command
from parley_core.files import write_private_file
from parley_core.topology import SERVICES

QUARANTINE_FILE = Path("nats") / "quarantine.json"


def quarantined(data_dir: Path) -> dict[str, dict[str, str]]:
    """service -> {"since", "why"}; an unreadable file holds no quarantine (and is said so on lift)."""
    path = data_dir / QUARANTINE_FILE
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {s: dict(v) for s, v in loaded.items() if s in SERVICES and isinstance(v, dict)}


def put_in_quarantine(data_dir: Path, service: str, why: str) -> None:
    held = quarantined(data_dir)
    held[service] = {"since": datetime.now(UTC).isoformat(timespec="seconds"), "why": why}
    _write(data_dir, held)


def lift(data_dir: Path, service: str) -> bool:
    """False if the service was not quarantined."""
    held = quarantined(data_dir)
    if held.pop(service, None) is None:
        return False
    _write(data_dir, held)
    return True


def _write(data_dir: Path, held: dict[str, dict[str, str]]) -> None:
    write_private_file(data_dir / QUARANTINE_FILE, (json.dumps(held, indent=2, sort_keys=True) + "\n").encode())


async def cmd_quarantine(args: argparse.Namespace) -> int:
    held = quarantined(args.data_dir)
    if not held:
        print("no service is quarantined: every service may make its consumers")
    for service, entry in sorted(held.items()):
        print(f"{service}: quarantined since {entry.get('since', '?')}: {entry.get('why', '')}")
    return 0


async def cmd_lift(args: argparse.Namespace) -> int:
    if not lift(args.data_dir, args.service):
        print(f"{args.service} is not quarantined")
        return 1
    print(
        f"lifted: {args.service} may make consumers again once `parley up` has reloaded nats-server (within a "
        "second or so; at its next start if it is not running)"
    )
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    quarantine = command(
        sub,
        "quarantine",
        cmd_quarantine,
        help="services whose NATS credential kept flooding a stream with consumers (operator)",
        description="The platform's consumer guard deletes every JetStream consumer no service may keep; a "
        "service whose credential keeps making them may make no consumer but its declared durables until lifted.",
    )
    commands = quarantine.add_subparsers(dest="quarantine_command")
    lifted = command(commands, "lift", cmd_lift, help="let a quarantined service make consumers again")
    lifted.add_argument("service", choices=SERVICES)
