"""What `parley up` tells the person who started it once everything is up: where to connect, and
the first commands to type (an owner's account on a new folder; a login on one in use)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from parley_agent import Door

Say = Callable[[str], None]


def tell_how_to_connect(say: Say, data_dir: Path, gateway: Door, *, api_url: str, web_app: str, ca: Path) -> None:
    """`web_app`: the web app's URL when the gateway serves one (`make run` builds it), else ""."""
    say(f"all services are up. Gateway (TLS): {gateway.address}")
    if web_app:
        say(f"web app: {web_app} (TLS; your browser must trust the CA certificate below)")
    else:
        say(f"browser API (Connect, TLS): {api_url} (no web app: start with `make run` to build it)")
    say(f"CA certificate for clients: {ca}")
    say(f"logs: {data_dir / 'logs'}")


def tell_first_steps(say: Say, data_dir: Path) -> None:
    cli = f".venv/bin/parley --data-dir {data_dir}"
    say("connect the CLI from another terminal, for example (first account: an owner):")
    say(f"  {cli} admin create-user alice --role owner")
    say(f"  {cli} login alice")
    say(f"  {cli} --as alice create-channel general")
    say(f"  {cli} --as alice chat general")


def tell_next_steps(say: Say, data_dir: Path) -> None:
    """Its accounts and channels exist already: a "create #general" hint would make a second one."""
    cli = f".venv/bin/parley --data-dir {data_dir}"
    say("connect the CLI from another terminal, for example:")
    say(f"  {cli} login USER")
    say(f"  {cli} --as USER channels")
    say(f"  {cli} --as USER chat CHANNEL")
