"""The first host's front doors: the addresses clients, browsers and other hosts are given.

Every port is the last run's again (platform.json keeps them in the data folder): clients find
the gateway and the web app where they were, and joined hosts, whose bundles name the first
host's service doors (`parley host add`), find auth, messaging, storage and the registry there
after a restart of `parley up`. The gateway and the web app move to another port when theirs is
taken (a person is told the new one); a service door refuses to, since no bundle would learn it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

from parley_agent import Door, door_for
from parley_agent.shared_port import claim
from parley_cli.state import previous_port, previous_web_port

DEFAULT_GATEWAY_PORT = 7443
# The gateway's address for browsers (the web app and the Connect API), claimed like the client
# port so every gateway instance, old and new during a roll-out, listens there too.
DEFAULT_WEB_PORT = 8443


class KeptPortTaken(RuntimeError):
    """A service door's port of the last run is held by another program; the message says what to do."""


async def open_client_port(data_dir: Path, requested: int | None, say: Callable[[str], None]) -> Door:
    """The gateway's port: the one asked for, else the previous run's (so clients find it
    again), else 7443, else a free one. Connections of the previous run that linger in
    TIME_WAIT do not make it move (parley_agent.shared_port.claim)."""
    candidates: dict[int, str] = {}  # each port once, with the first reason to try it
    for port, why in (
        (requested, "asked for"),
        (previous_port(data_dir, "gateway"), "the last run's"),
        (DEFAULT_GATEWAY_PORT, "the default"),
    ):
        if port:
            candidates.setdefault(int(port), why)
    busy: list[str] = []
    door: Door | None = None
    for port, why in candidates.items():
        try:
            door = await door_for("gateway", port=port).start()
            break
        except OSError:
            busy.append(f"{port} ({why})")
    if door is None:
        door = await door_for("gateway").start()
    if busy:
        # Clients told the usual address would find nothing there: say where the gateway is instead.
        taken = door.address.rsplit(":", 1)[-1]
        ports = f"port {busy[0]} is" if len(busy) == 1 else f"ports {' and '.join(busy)} are"
        say(f"gateway {ports} busy; the gateway took port {taken} instead")
    return door


async def open_service_door(data_dir: Path, service: str) -> Door:
    """The service's front door on the last run's port (a free one on the first start)."""
    kept = previous_port(data_dir, service)
    try:
        return await door_for(service, port=kept or 0).start()
    except OSError as exc:
        raise KeptPortTaken(
            f"{service}'s front door cannot listen on port {kept} again ({exc.strerror or exc}): another program "
            f"holds it (`ss -ltnp 'sport = :{kept}'` names it). Joined hosts call {service} there, so it keeps "
            "that port: stop that program and start again"
        ) from None


def claim_web_port(data_dir: Path, requested: int | None, say: Callable[[str], None]) -> socket.socket:
    """The port asked for, else the previous run's (so a browser's bookmark finds the app again),
    else 8443, else a free port; held (parley_agent.shared_port.claim) while the platform runs."""
    candidates: dict[int, str] = {}  # each port once, with the first reason to try it
    for port, why in (
        (requested, "asked for"),
        (previous_web_port(data_dir), "the last run's"),
        (DEFAULT_WEB_PORT, "the default"),
    ):
        if port:
            candidates.setdefault(port, why)
    busy: list[str] = []
    held: socket.socket | None = None
    for port, why in candidates.items():
        try:
            held = claim("127.0.0.1", port)
            break
        except OSError:
            busy.append(f"{port} ({why})")
    if held is None:
        held = claim("127.0.0.1", 0)
    if busy:
        # A browser pointed at the usual address would find nothing there: say where it is instead.
        taken = held.getsockname()[1]
        ports = f"port {busy[0]} is" if len(busy) == 1 else f"ports {' and '.join(busy)} are"
        say(f"web {ports} busy; the web app took port {taken} instead")
    return held
