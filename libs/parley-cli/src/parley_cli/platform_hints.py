"""What `parley up` tells the person who started it once everything is up: where to connect, and
the first commands to type (an owner's account on a new folder; a login on one in use)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from parley_agent import Door
from parley_core.platform_state import READY_LINE

Say = Callable[[str], None]


def tell_how_to_connect(say: Say, data_dir: Path, gateway: Door, *, api_url: str, web_app: str, ca: Path) -> None:
    """`web_app`: the web app's URL when the gateway serves one (`make run` builds it), else ""."""
    say(f"{READY_LINE}. Gateway (TLS): {gateway.address}")
    if web_app:
        say(f"web app: {web_app} (TLS; your browser must trust the CA certificate below)")
    else:
        say(f"browser API (Connect, TLS): {api_url} (no web app: start with `make run` to build it)")
    say(f"CA certificate for clients: {ca}")
    say(f"logs: {data_dir / 'logs'}")


# The first commands to type: on a new folder an owner's account and #general; on one in use a
# login (its accounts and channels exist already: a "create #general" hint would make a second).
FIRST_STEPS = (
    "connect the CLI from another terminal, for example (first account: an owner):",
    (
        "admin create-user alice --role owner",
        "login alice",
        "--as alice create-channel general",
        "--as alice chat general",
    ),
)
NEXT_STEPS = (
    "connect the CLI from another terminal, for example:",
    ("login USER", "--as USER channels", "--as USER chat CHANNEL"),
)


def tell_cli_steps(say: Say, data_dir: Path, *, new_folder: bool) -> None:
    intro, commands = FIRST_STEPS if new_folder else NEXT_STEPS
    say(intro)
    for command in commands:
        say(f"  .venv/bin/parley --data-dir {data_dir} {command}")
