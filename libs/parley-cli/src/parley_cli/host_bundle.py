"""A host's bundle: what a machine needs to run some of the platform's services in the fleet.

`parley host add NAME --services …` makes it on the operator's side, from the first host's data
folder: certificates issued by the platform CA for the services assigned to the host and for its
node agent (the CA's key never leaves the operator's folder), those services' NATS passwords, and
the fleet's shared configuration (NATS URLs, stream replicas, the registry's and the other
services' addresses). `parley host join BUNDLE` on the host reads it.

A host may run the services whose state is the event log alone (messaging, gateway); auth,
whose keys the bundle carries (its sealing key, audit key and the signing key in use; a later
rotation's successor reaches every auth instance sealed under the sealing key, on the AUTH
stream); and storage when the archive is in PostgreSQL: the bundle carries the database URL and
the backup keys, but not the KEK keyring, which `host join --storage-keyring` names on a file
system the hosts share (a copy would diverge at the first KEK rotation or erasure: the first
host destroys the KEKs the copy still holds). The patch registry likewise: a second instance
writes the first host's TUF repository (releases, online keys), which `host join
--registry-folder` names on a shared file system. With `--nats-node` the host also
runs one of the JetStream cluster's nodes, handed over from the first host (nats_handover): the
bundle then carries the nats certificate and every NATS password, which a node's accounts hold.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from parley_auth.key_files import AUDIT_KEY_FILE
from parley_auth.key_files import SIGNING_KEY_FILE as AUTH_SIGNING_KEY_FILE
from parley_cli.joined_host import FLEET_FILE
from parley_core.contracts import AUTH_SEALING_KEY_FILE
from parley_core.database import DATABASE_URL_FILE
from parley_core.files import ensure_private_dir, write_private_file
from parley_core.pki import Pki, issue_into
from parley_core.topology import NATS_IDENTITY, NODE_AGENT
from parley_storage.key_files import BACKUP_KEY_FILES as STORAGE_BACKUP_KEY_FILES

__all__ = ["HOSTABLE_SERVICES", "BundleRefused", "FleetConfig", "make_bundle", "read_bundle"]

HOSTABLE_SERVICES = ("messaging", "gateway", "auth", "storage", "patch-registry")
# What a service on another host needs from the first host's secrets/ besides its NATS password.
SERVICE_SECRETS = {
    "auth": (AUTH_SEALING_KEY_FILE, AUDIT_KEY_FILE, AUTH_SIGNING_KEY_FILE),
    "storage": (DATABASE_URL_FILE.name, *STORAGE_BACKUP_KEY_FILES),
}
BUNDLE_FORMAT = 1
_HOST_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class BundleRefused(ValueError):
    """The host, its services or the platform's state do not make a bundle; the message says why."""


@dataclass(frozen=True)
class FleetConfig:
    """The shared configuration every host of the fleet runs with, and this host's part of it."""

    host: str
    services: tuple[str, ...]
    nats_url: str
    nats_replicas: int
    registry_address: str
    # The first host's front door of each service another service calls (PEER_ADDRESS_ENV).
    peers: dict[str, str]
    # A NATS cluster node this host runs in place of one of the first host's: its server name and
    # the route addresses of the cluster's other nodes (nats_node_bundle); None when it runs none.
    nats_node: dict[str, Any] | None = None
    # The first host's gateway: the CLI on a host without one of its own logs in there (joined_host).
    gateway_address: str = ""
    format: int = BUNDLE_FORMAT

    def environment(self, data_dir: Path) -> dict[str, str]:
        """What every instance on this host is told (the agent adds its port and instance id)."""
        from parley_core.config import PEER_ADDRESS_ENV  # pydantic-settings: slow to import for every command

        env = {
            "PARLEY_DATA_DIR": str(data_dir),
            "PARLEY_HOST_NAME": self.host,
            "PARLEY_NATS_URL": self.nats_url,
            "PARLEY_NATS_REPLICAS": str(self.nats_replicas),
            "PARLEY_METRICS_LISTEN": "127.0.0.1:0",
        }
        for peer, var in PEER_ADDRESS_ENV.items():
            env[var] = self.peers[peer]
        return env


def parse_services(text: str, *, nats_node: bool = False) -> tuple[str, ...]:
    services = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    if not services and not nats_node:
        raise BundleRefused("name the services this host runs, e.g. --services messaging,gateway (or --nats-node)")
    others = [s for s in services if s not in HOSTABLE_SERVICES]
    if others:
        raise BundleRefused(f"no service {', '.join(others)}; a host runs any of {', '.join(HOSTABLE_SERVICES)}")
    return services


def make_bundle(
    *,
    state: dict[str, Any],
    pki: Pki,
    passwords: dict[str, str],
    host: str,
    services: tuple[str, ...],
    out: Path,
    secrets: Path,
    nats_node: dict[str, Any] | None = None,
    address: str = "",
) -> FleetConfig:
    """Writes the bundle into `out` (a new folder, 0700); refuses before writing anything.
    `secrets` is the first host's secrets folder (the keys SERVICE_SECRETS names); `nats_node`
    the NATS node the host takes over (its name and routes): then the bundle carries the nats
    certificate and every NATS password, which the node's accounts config holds."""
    from parley_core.config import PEER_ADDRESS_ENV

    if not _HOST_NAME.match(host):
        raise BundleRefused(f"{host!r} is no host name: lower-case letters, digits and '-', at most 63")
    if out.exists():
        raise BundleRefused(f"{out} exists; name a new folder for the bundle")
    if not state.get("running"):
        raise BundleRefused("the platform is not running: start it with `parley up` (its addresses go into the bundle)")
    addresses = {name: str(s.get("address", "")) for name, s in state.get("services", {}).items()}
    missing = [name for name in (*PEER_ADDRESS_ENV, "patch-registry") if not addresses.get(name)]
    if missing:
        raise BundleRefused(f"the platform's state names no address for {', '.join(missing)}; is it fully up?")
    if "storage" in services and not (secrets / DATABASE_URL_FILE.name).is_file():
        raise BundleRefused(
            "storage runs on another host only when the archive is in PostgreSQL (SQLite is a file on the first "
            "host): start the platform with `parley up --database-url postgresql://…`"
        )
    keys = [name for service in services for name in SERVICE_SECRETS.get(service, ())]
    absent = [name for name in keys if not (secrets / name).is_file()]
    if absent:
        raise BundleRefused(f"{secrets} lacks {', '.join(absent)}; has every service started once?")
    fleet = FleetConfig(
        host=host,
        services=services,
        nats_url=str(state["nats_url"]),
        nats_replicas=3 if len(state.get("nats", [])) >= 3 else 1,
        registry_address=addresses["patch-registry"],
        peers={peer: addresses[peer] for peer in PEER_ADDRESS_ENV},
        nats_node=nats_node,
        gateway_address=addresses.get("gateway", ""),
    )
    try:
        ensure_private_dir(out)
        # The host's agent gets a node-agent certificate, never the platform identity's: that one
        # administers the platform (rbac.NODE_AGENT_METHODS is what the agent's reaches alone).
        names = [*services, NODE_AGENT, *([NATS_IDENTITY] if nats_node else [])]
        issue_into(pki, names, out / "pki", [address] if address else [])
        ensure_private_dir(out / "secrets")
        own = dict(passwords) if nats_node else {service: passwords[service] for service in services}
        write_private_file(out / "secrets" / "nats-passwords.json", json.dumps(own, indent=2).encode())
        for name in keys:
            write_private_file(out / "secrets" / name, (secrets / name).read_bytes())
        write_private_file(out / FLEET_FILE, json.dumps(asdict(fleet), indent=2).encode())
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # no half-made bundle
        raise
    return fleet


def read_bundle(bundle: Path) -> FleetConfig:
    path = bundle / FLEET_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleRefused(f"{bundle} is no host bundle (no {FLEET_FILE}); make one with `parley host add`") from None
    except ValueError as exc:
        raise BundleRefused(f"{path} is not valid JSON: {exc}") from None
    if raw.get("format") != BUNDLE_FORMAT:
        raise BundleRefused(f"{path} is a bundle of format {raw.get('format')!r}; this parley reads {BUNDLE_FORMAT}")
    fleet = FleetConfig(**{**raw, "services": tuple(raw["services"])})
    parse_services(",".join(fleet.services), nats_node=fleet.nats_node is not None)
    return fleet
