"""A joined host's data folder (`parley host join` leaves host.json and the bundle's fleet.json
in it, but no platform.json): which host of which fleet it is, and the fleet's addresses the
CLI uses from it (the first host's gateway, patch registry and storage)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parley_core.platform_state import STATE_FILE
from parley_core.platform_state import process_alive as _alive

HOST_STATE_FILE = "host.json"
FLEET_FILE = "fleet.json"


@dataclass(frozen=True)
class JoinedHost:
    data_dir: Path
    name: str
    fleet: dict[str, Any]  # the bundle's fleet.json ({} from a join before it was kept)
    state: dict[str, Any]  # host.json, as `host join` last wrote it ({} before it did)

    @property
    def registry_address(self) -> str:
        return str(self.fleet.get("registry_address") or "")

    @property
    def gateway_address(self) -> str:
        return str(self.fleet.get("gateway_address") or "")

    @property
    def storage_address(self) -> str:
        return str(self.fleet.get("peers", {}).get("storage") or "")

    @property
    def running(self) -> bool:
        """host.json says running until `host join` stops cleanly; a killed one leaves no live instance."""
        pids = [i.get("pid") for i in self.state.get("instances", [])]
        return bool(self.state.get("running")) and any(_alive(p) for p in pids if isinstance(p, int))

    def described(self) -> str:
        fleet = f" of the fleet whose first host's patch registry is at {self.registry_address}"
        return f"{self.data_dir} is the folder of joined host {self.name}{fleet if self.registry_address else ''}"


def joined_host(data_dir: Path) -> JoinedHost | None:
    """The folder's joined host, or None for a platform's own folder (or none at all)."""
    if (data_dir / STATE_FILE).exists():
        return None
    fleet, state = _read(data_dir / FLEET_FILE), _read(data_dir / HOST_STATE_FILE)
    if not fleet and not state:
        return None
    return JoinedHost(data_dir, str(state.get("host") or fleet.get("host") or data_dir.name), fleet, state)


def _read(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


async def joined_host_status(joined: JoinedHost) -> int:
    """`parley status` on a joined host's folder: this host's front doors and their health; the
    fleet's platform (NATS, the other services) is the first host's to show."""
    from parley_cli.health import check_health
    from parley_core.pki import ensure_pki, tooling_identity

    print(f"{joined.described()} (`parley host join`)")
    if not joined.running:
        again = f"`parley --data-dir {joined.data_dir} host join BUNDLE`"
        print(f"host {joined.name} is not running: start it again with {again}")
        return 1
    identity = tooling_identity(joined.data_dir / "pki")
    pki = ensure_pki(joined.data_dir / "pki", [identity])
    healthy = True
    print(f"{'service':<16}{'address':<22}health")
    for name, door in joined.state.get("services", {}).items():
        status = await check_health(pki, service=name, address=str(door["address"]))
        healthy &= status == "SERVING"
        print(f"{name:<16}{door['address']:<22}{status}")
    print(f"host {joined.name}: {'HEALTHY' if healthy else 'UNHEALTHY'}")
    print("the whole fleet: `parley fleet` here, or `parley status` on the first host's folder")
    return 0 if healthy else 1
