"""What `parley up` leaves in the data folder for the other commands: ports, pids, NATS URL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from parley_core import platform_state
from parley_core.platform_state import process_alive as _alive

STATE_FILE = platform_state.STATE_FILE
CLIENT_FILE = "client.json"


class PlatformNotRunning(FileNotFoundError):
    pass


def load_running_state(data_dir: Path) -> dict[str, Any]:
    """The state of a running platform, or a clear error saying how to start one."""
    path = data_dir / STATE_FILE
    if not path.exists():
        raise PlatformNotRunning(f"no platform state in {data_dir}; start the platform with `make run` first")
    state: dict[str, Any] = json.loads(path.read_text())
    if not state.get("running", True) or not _alive(state.get("pid")):
        raise PlatformNotRunning(f"the platform in {data_dir} is not running; start it with `make run`")
    return state


def leftover_pids(data_dir: Path) -> list[int]:
    """Processes a `parley up` that did not stop cleanly (killed, crashed) left running.

    Its nats-server and services run in sessions of their own, so they outlive it: the state
    file still says "running" and names their pids.
    """
    path = data_dir / STATE_FILE
    if not path.exists():
        return []
    state = json.loads(path.read_text())
    if not state.get("running") or _alive(state.get("pid")):
        return []
    pids = [pid for pid in state.get("nats_pids", []) if isinstance(pid, int)]
    for service in state.get("services", {}).values():
        pids += [i["pid"] for i in service.get("instances", []) if isinstance(i.get("pid"), int)]
    return [pid for pid in pids if _alive(pid)]


def previous_port(data_dir: Path, service: str) -> int | None:
    path = data_dir / STATE_FILE
    if not path.exists():
        return None
    port = json.loads(path.read_text()).get("services", {}).get(service, {}).get("port")
    return int(port) if port else None


def previous_version(data_dir: Path, service: str) -> str | None:
    """The version a service ran when the platform last wrote its state (a roll-out may have changed it)."""
    path = data_dir / STATE_FILE
    if not path.exists():
        return None
    version = json.loads(path.read_text()).get("services", {}).get(service, {}).get("version")
    return str(version) if version else None
