"""What `parley up` leaves in the data folder for the other commands: ports, pids, NATS URL."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parley_cli.joined_host import joined_host
from parley_core import platform_state
from parley_core.files import write_private_file
from parley_core.platform_state import process_alive as _alive

if TYPE_CHECKING:  # the agent's stack loads with `parley up` only
    from parley_agent.door_book import DoorBook
    from parley_agent.instances import Instance

STATE_FILE = platform_state.STATE_FILE
CLIENT_FILE = "client.json"
DEFAULT_DATA_DIR = Path(".parley")  # the folder `make run` starts without DATA_DIR or $PARLEY_DATA_DIR


class PlatformNotRunning(FileNotFoundError):
    pass


def remembered_file() -> Path:
    """Where `parley up` notes the data folder it started, so that the CLI finds the platform from
    any folder: $XDG_CONFIG_HOME/parley/data-dir (~/.config/parley/data-dir)."""
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "parley" / "data-dir"


def remember_data_dir(data_dir: Path) -> None:
    """Noted by `parley up`; a home folder that cannot be written only loses the convenience."""
    path = remembered_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{data_dir.resolve()}\n")
    except OSError:
        pass


def _remembered_note() -> Path | None:
    try:
        text = remembered_file().read_text().strip()
    except OSError:
        return None
    return Path(text) if text else None


def remembered_data_dir() -> Path | None:
    """The folder `parley up` last started, unless it was deleted since (then the note is ignored)."""
    noted = _remembered_note()
    return noted if noted is not None and noted.is_dir() else None


def deleted_remembered_dir() -> Path | None:
    """The folder `parley up` last started when it is gone: worth saying when nothing else is found."""
    noted = _remembered_note()
    return noted if noted is not None and not noted.exists() else None


def default_data_dir() -> Path:
    """Without --data-dir: $PARLEY_DATA_DIR, else ./.parley when this folder has one (the repository's
    `make run`), else the folder `parley up` last started, else ./.parley."""
    if env := os.environ.get("PARLEY_DATA_DIR"):
        return Path(env)
    if DEFAULT_DATA_DIR.is_dir():
        return DEFAULT_DATA_DIR
    return remembered_data_dir() or DEFAULT_DATA_DIR


def how_to_start(data_dir: Path) -> str:
    """The command that starts the platform in this folder: a bare `make run` starts ./.parley only."""
    if data_dir.resolve() == DEFAULT_DATA_DIR.resolve():
        return "`make run`"
    return f"`parley --data-dir {data_dir} up` (or `make run DATA_DIR={data_dir}`)"


WHICH_FOLDER = (
    "another folder is named with --data-dir DIR or $PARLEY_DATA_DIR; without them the CLI uses ./.parley "
    "when there is one, else the folder `parley up` last started"
)


def no_platform(data_dir: Path) -> PlatformNotRunning:
    """The folder holds no running platform. One that ran here and stopped is said so (its data is
    there); another folder than the default that does not exist at all is more likely a mistyped
    --data-dir than a platform never started there; a joined host's folder is never one to start a
    platform in (that would be a second platform)."""
    if joined := joined_host(data_dir):
        return PlatformNotRunning(
            f"{joined.described()}, not a platform's own (this command needs one): run it with --data-dir "
            "naming the first host's folder"
        )
    if (data_dir / STATE_FILE).exists():
        return not_running(data_dir)
    if not data_dir.exists() and data_dir.resolve() != DEFAULT_DATA_DIR.resolve():
        return PlatformNotRunning(f"no folder {data_dir}: is --data-dir (or $PARLEY_DATA_DIR) right?")
    if data_dir.resolve() == DEFAULT_DATA_DIR.resolve():
        # Run from a folder that is not the repository's: say where it looked and how to point it elsewhere.
        gone = deleted_remembered_dir()
        last = f"; the folder `parley up` last started, {gone}, no longer exists" if gone else ""
        return PlatformNotRunning(
            f"no platform state in {data_dir.resolve()}{last}; start the platform with {how_to_start(data_dir)} "
            f"first in the repository's folder ({WHICH_FOLDER})"
        )
    return PlatformNotRunning(
        f"no platform state in {data_dir}; start the platform with {how_to_start(data_dir)} first"
    )


def last_state(data_dir: Path) -> dict[str, Any]:
    """The state file as the last `parley up` left it; empty before the first."""
    path = data_dir / STATE_FILE
    state: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    return state


def unavailable_hint(data_dir: Path, gateway: str | None = None) -> str:
    """After an UNAVAILABLE answer: with the platform running, a service behind it is down (status
    names it), and telling to start the platform would mislead; a --gateway address the user gave
    is named instead (status knows nothing of it)."""
    if gateway:
        return f"is --gateway {gateway} right? that address is not answering"
    state = last_state(data_dir)
    if joined_host(data_dir) or (state.get("running") and _alive(state.get("pid"))):
        return "a service it needs is unavailable: `parley status` names the one that is down"
    return f"is the platform running? {how_to_start(data_dir)} starts it; `parley status` shows what is down"


def gateway_gone(data_dir: Path, gateway: str | None = None) -> str | None:
    """Why the gateway cannot be reached, when this folder says: the platform in it stopped, or
    the --gateway address given; None while the platform runs."""
    if gateway:
        return f"the gateway at {gateway} (--gateway) is not answering"
    state = last_state(data_dir)
    if joined_host(data_dir) or (state.get("running") and _alive(state.get("pid"))):
        return None
    return f"the platform is not running (start it with {how_to_start(data_dir)})"


def load_running_state(data_dir: Path) -> dict[str, Any]:
    """The state of a running platform, or a clear error saying how to start one."""
    path = data_dir / STATE_FILE
    if not path.exists():
        raise no_platform(data_dir)
    state: dict[str, Any] = json.loads(path.read_text())
    if not state.get("running", True) or not _alive(state.get("pid")):
        raise not_running(data_dir)
    return state


def not_running(data_dir: Path) -> PlatformNotRunning:
    return PlatformNotRunning(f"the platform in {data_dir} is not running; start it with {how_to_start(data_dir)}")


def leftover_pids(data_dir: Path) -> list[int]:
    """Processes a `parley up` that did not stop cleanly (killed, crashed) left running.

    Its nats-server and services run in sessions of their own, so they outlive it: the state
    file still says "running" and names their pids.
    """
    state = last_state(data_dir)
    if not state.get("running") or _alive(state.get("pid")):
        return []
    pids = [pid for pid in state.get("nats_pids", []) if isinstance(pid, int)]
    for service in state.get("services", {}).values():
        pids += [i["pid"] for i in service.get("instances", []) if isinstance(i.get("pid"), int)]
    return [pid for pid in pids if _alive(pid)]


def previous_port(data_dir: Path, service: str) -> int | None:
    port = last_state(data_dir).get("services", {}).get(service, {}).get("port")
    return int(port) if port else None


def previous_nats_ports(data_dir: Path) -> list[tuple[int | None, int | None]]:
    """Each NATS node's client and route port on this folder's last run: reused, so the nodes
    handed over to other hosts (which know these routes) find the first host's again."""
    nodes = last_state(data_dir).get("nats", [])
    return [(_port_of(n.get("url")), _port_of(n.get("route"))) for n in nodes]


def _port_of(address: object) -> int | None:
    return int(address.rsplit(":", 1)[1]) if isinstance(address, str) and ":" in address else None


def previous_web_port(data_dir: Path) -> int | None:
    """The web app's port on this data folder's last run (kept in platform.json)."""
    port = last_state(data_dir).get("web", {}).get("port")
    return int(port) if port else None


def previous_version(data_dir: Path, service: str) -> str | None:
    """The version a service ran when the platform last wrote its state (a roll-out may have changed it)."""
    version = last_state(data_dir).get("services", {}).get(service, {}).get("version")
    return str(version) if version else None


def write_starting_state(data_dir: Path, nats: dict[str, Any]) -> None:
    """Once nats-server runs (`nats`: its nats_url, nats_pids and nats entries): a `parley up`
    killed before its services are up (a long re-seed) leaves pids the next start and `parley
    status` find. Ports and versions of the last run are kept for this start to reuse."""
    previous = last_state(data_dir)
    services = {
        name: {"port": s.get("port"), "version": s.get("version"), "instances": []}
        for name, s in previous.get("services", {}).items()
    }
    state = {"running": True, "pid": os.getpid(), **nats, "services": services, "web": previous.get("web", {})}
    write_private_file(data_dir / STATE_FILE, json.dumps(state, indent=2).encode())


def running_state(
    data_dir: Path,
    doors: Mapping[str, DoorBook],
    instances_of: Callable[[str], list[Instance]],
    *,
    nats: dict[str, Any],
    web_port: int | None,
) -> dict[str, Any]:
    """The state of the running platform: each service's door and serving instances, the broker
    (`nats`, as for write_starting_state) and the web app's port."""
    services: dict[str, Any] = {}
    for name, door in doors.items():
        instances = [i for i in instances_of(name) if i.serving]
        running = [i for i in instances if i.process is not None and i.process.returncode is None]
        services[name] = {
            "port": door.port,
            "address": door.address,
            # The first live instance: what `kill` in a test or an operator's script means.
            "pid": running[0].process.pid if running and running[0].process else None,
            "version": instances[-1].version if instances else previous_version(data_dir, name),
            "instances": [
                {
                    "instance_id": i.instance_id,
                    "address": i.address,
                    "version": i.version,
                    "pid": i.process.pid if i.process else None,
                }
                for i in instances
            ],
        }
    return {"running": True, "pid": os.getpid(), **nats, "services": services, "web": {"port": web_port}}


def write_running_state(data_dir: Path, state: dict[str, Any], *, client: dict[str, str]) -> None:
    """The state file, and client.json: where clients find the gateway and the CA to trust."""
    write_private_file(data_dir / STATE_FILE, json.dumps(state, indent=2).encode())
    write_private_file(data_dir / CLIENT_FILE, json.dumps(client, indent=2).encode())


def mark_stopped(data_dir: Path) -> None:
    """Keep the ports and versions for the next start, but let no client dial a platform that is gone."""
    (data_dir / CLIENT_FILE).unlink(missing_ok=True)
    path = data_dir / STATE_FILE
    if path.exists():
        state = json.loads(path.read_text())
        state["running"] = False
        write_private_file(path, json.dumps(state, indent=2).encode())
