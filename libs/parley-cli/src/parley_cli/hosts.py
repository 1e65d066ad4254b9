"""`parley host add|join`: another machine joins the fleet with a node agent of its own.

`host add` (the operator, on the first host's data folder) issues the host's bundle
(parley_cli.host_bundle). `host join BUNDLE` (on the host) runs a node agent for the services
the bundle assigns it, with the fleet's NATS cluster and the registry's address: its instances
report to the same fleet view (`parley fleet` names the host), and the agent follows the
registry's roll-outs, doing each step whose old instance is on this host. Ctrl-C drains them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import sys
from pathlib import Path

from parley_auth.key_files import SUCCESSOR_KEY_FILES
from parley_cli.arguments import command, command_group
from parley_cli.host_address import add_host_address_option
from parley_cli.host_bundle import (
    SERVICE_SECRETS,
    BundleRefused,
    FleetConfig,
    make_bundle,
    parse_services,
    read_bundle,
)
from parley_cli.joined_host import FLEET_FILE, HOST_STATE_FILE
from parley_cli.joined_nats import JoinedNatsNode
from parley_cli.nats_handover import choose_node, hand_over
from parley_cli.state import CLIENT_FILE, PlatformNotRunning, load_running_state
from parley_cli.terminal import shown
from parley_cli.uplock import PlatformAlreadyRunning, UpLock
from parley_core.files import ensure_private_dir, write_private_file
from parley_core.jobs import every
from parley_core.natsconf import ensure_nats_passwords
from parley_core.pki import CA_NAME, CertificateMissing, Pki, ensure_pki, tooling_identity
from parley_core.topology import NATS_IDENTITY
from parley_storage.key_files import KEYRING_FILE

REGISTRY = "patch-registry"
SUPERVISE_INTERVAL_S = 0.5
HEALTHY_S = 60.0  # the node agent waits this long for a new instance to answer its health check
DRAIN_S = 20.0


def say(text: str) -> None:
    print(f"[parley host] {shown(text)}", flush=True)  # a roll-out's reason is others' text


async def cmd_host_add(args: argparse.Namespace) -> int:
    try:
        services = parse_services(args.services, nats_node=args.nats_node)
        state = load_running_state(args.data_dir)
        pki = Pki(directory=args.data_dir / "pki", ca_cert=args.data_dir / "pki" / f"{CA_NAME}.crt")
        passwords = ensure_nats_passwords(args.data_dir / "secrets" / "nats-passwords.json", [])
        node = choose_node(state, args.data_dir) if args.nats_node else None
        fleet = make_bundle(
            state=state,
            pki=pki,
            passwords=passwords,
            host=args.name,
            services=services,
            out=args.out,
            secrets=args.data_dir / "secrets",
            nats_node=node,
            address=args.address,
        )
    except (BundleRefused, PlatformNotRunning, CertificateMissing) as exc:
        print(f"parley host add: {exc}", file=sys.stderr)
        return 2
    if node is not None:
        hand_over(args.data_dir, state, node, fleet.host)
        print(
            f"NATS node {node['name']} is handed over to host {fleet.host}: stopped here, the cluster runs on the "
            "other nodes until that host joins (the bundle carries every NATS password, for the node's accounts)"
        )
    join = _join_command(fleet, args.out, args.data_dir.resolve())
    print(
        f"bundle for host {fleet.host} ({', '.join(fleet.services) or 'no services'}) in {args.out}: "
        f"certificates from this platform's CA (not its key), {_secrets_carried(fleet)}, the fleet's addresses. "
        f"Copy it to the host over a private channel and run there: {join}"
    )
    return 0


def _join_command(fleet: FleetConfig, bundle: Path, data_dir: Path) -> str:
    """The `host join` that starts this bundle's services: storage and the registry also need
    the first host's keyring and repository on a shared file system (_storage_keyring, _registry_folder)."""
    command, shared = f"parley --data-dir DIR host join {bundle}", []
    if "storage" in fleet.services:
        command += " --storage-keyring KEYRING"
        shared.append(f"KEYRING is this host's {data_dir / 'secrets' / KEYRING_FILE}")
    if REGISTRY in fleet.services:
        command += " --registry-folder FOLDER"
        shared.append(f"FOLDER is this host's {data_dir / REGISTRY}")
    if shared:
        command += f" ({', '.join(shared)}, on a file system both hosts share)"
    return command


# What SERVICE_SECRETS' files are, as `host add` names them.
SECRETS_NAMED = {"auth": "auth's keys", "storage": "storage's database URL and backup keys"}


def _secrets_carried(fleet: FleetConfig) -> str:
    """The secrets this bundle holds, no more: the operator judges the channel it goes over by them."""
    passwords = "every NATS password (for its NATS node)" if fleet.nats_node else "NATS passwords of those services"
    keys = [SECRETS_NAMED[s] for s in fleet.services if s in SERVICE_SECRETS]
    return ", ".join([passwords, *keys])


def _storage_keyring(fleet: FleetConfig, keyring: Path | None) -> dict[str, str]:
    """Storage on this host uses the fleet's one KEK keyring, which the bundle never carries."""
    if "storage" not in fleet.services:
        return {}
    if keyring is None:
        raise BundleRefused(
            "this host runs storage: name the fleet's KEK keyring with --storage-keyring PATH (the first host's "
            "secrets/storage-kek.json on a file system both hosts share); a copy would diverge at the first "
            "KEK rotation or erasure"
        )
    if not keyring.is_file():
        raise BundleRefused(f"--storage-keyring {keyring}: no such file (storage would start a keyring of its own)")
    return {"PARLEY_STORAGE_KEYRING_FILE": str(keyring.resolve())}


def _registry_folder(fleet: FleetConfig, folder: Path | None) -> dict[str, str]:
    """The registry on this host writes the fleet's one TUF repository, which the bundle never carries."""
    if REGISTRY not in fleet.services:
        return {}
    if folder is None:
        raise BundleRefused(
            "this host runs the patch registry: name the first host's registry folder with --registry-folder PATH "
            "(its patch-registry/ on a file system both hosts share); a copy would miss every later release"
        )
    if not (folder / "tuf" / "metadata" / "1.root.json").is_file():
        raise BundleRefused(
            f"--registry-folder {folder}: no TUF repository there (tuf/metadata/1.root.json); name the first "
            "host's patch-registry/ folder, or the registry would start a repository of its own"
        )
    return {"PARLEY_PATCH_FOLDER": str(folder.resolve())}


JOINING = ".joining"  # where `host join` stages a bundle's files in the host's data folder
INSTALLED = ("pki", "secrets")


def _install(bundle: Path, data_dir: Path, fleet: FleetConfig) -> None:
    """The bundle's certificates, secrets and fleet addresses into the host's data folder, in place
    of an older bundle's: pki/ and secrets/ hold what this bundle carries and no more (a service no
    longer assigned here leaves no key behind), besides what a part it still assigns made here
    (_made_here). Staged first, then swapped in: a join that fails while copying changes nothing."""
    if (data_dir / "pki" / f"{CA_NAME}.key").exists():
        raise BundleRefused(f"{data_dir} is a platform's own folder (it holds the CA key); join from another folder")
    staged = data_dir / JOINING
    shutil.rmtree(staged, ignore_errors=True)  # from a join that stopped half-way
    try:
        for part in INSTALLED:
            ensure_private_dir(staged / part)
            for source in (bundle / part).iterdir():  # certificates; NATS passwords, and the services' keys
                write_private_file(staged / part / source.name, source.read_bytes())
        for kept in _made_here(data_dir / "secrets", fleet):
            write_private_file(staged / "secrets" / kept.name, kept.read_bytes())
        # The fleet's addresses, for the CLI run on this folder (`status`, `fleet`, `login`: joined_host).
        write_private_file(staged / FLEET_FILE, (bundle / FLEET_FILE).read_bytes())
    except OSError as exc:
        shutil.rmtree(staged, ignore_errors=True)
        raise BundleRefused(f"{bundle} was not installed, {data_dir} is unchanged: {exc}") from None
    for part in INSTALLED:  # renames only from here: each folder is the old bundle's or the new one's
        if (data_dir / part).exists():
            (data_dir / part).rename(staged / f"{part}.replaced")
        (staged / part).rename(data_dir / part)
    (staged / FLEET_FILE).replace(data_dir / FLEET_FILE)
    shutil.rmtree(staged)


def _made_here(secrets: Path, fleet: FleetConfig) -> list[Path]:
    """Secrets a part the bundle assigns made in this host's own folder, which no bundle carries:
    auth's successor signing keys from rotations, and the NATS node's store key (its JetStream
    store is encrypted with it)."""
    from parley_cli.platform_nats import STORE_KEY_FILE  # loads the NATS client: only `host join` needs it

    patterns = [SUCCESSOR_KEY_FILES] if "auth" in fleet.services else []
    patterns += [STORE_KEY_FILE] if fleet.nats_node else []
    return [path for pattern in patterns for path in secrets.glob(pattern) if path.is_file()]


class Host:
    """One host's node agent and its instances, from start to drained stop."""

    def __init__(
        self, data_dir: Path, fleet: FleetConfig, *, gateway_port: int | None, environment: dict[str, str]
    ) -> None:
        from parley_agent import AgentTimeouts, NodeAgent  # the whole agent (TUF): only `host join` loads it

        self.data_dir = data_dir
        self.fleet = fleet
        self.gateway_port = gateway_port
        own = tooling_identity(data_dir / "pki")  # node-agent; platform in a bundle from before it
        identities = [*fleet.services, own, *([NATS_IDENTITY] if fleet.nats_node else [])]
        self.pki = ensure_pki(data_dir / "pki", identities)  # checks, never issues here
        self.nats = JoinedNatsNode(data_dir, fleet.nats_node, self.pki) if fleet.nats_node else None
        environment = {**environment}
        if self.nats is not None:  # its services connect to this host's node first, the others are fallbacks
            environment["PARLEY_NATS_URL"] = f"{self.nats.process.url},{fleet.nats_url}"
        self.agent = NodeAgent(
            data_dir=data_dir / "agent",
            pki=self.pki,
            registry_address=fleet.registry_address,
            environment={**fleet.environment(data_dir), **environment},
            timeouts=AgentTimeouts(healthy_s=HEALTHY_S, drain_s=DRAIN_S),
            log_dir=data_dir / "logs",
            host=fleet.host,
            announce=say,
        )
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        from parley_cli.platform import START_ORDER  # the registry before the gateway that calls it
        from parley_cli.platform_releases import base_version
        from parley_core.config import PEER_ADDRESS_ENV

        if self.nats is not None:
            await self.nats.process.start()
            say(f"NATS node {self.nats.name} serving on {self.nats.process.url} (routes on {self.nats.route})")

        for service in self.fleet.services:
            port = self.gateway_port if service == "gateway" and self.gateway_port else 0
            door = await self.agent.open_front_door(service, port=port)
            if service in PEER_ADDRESS_ENV:  # callers on this host call its own instances
                self.agent.environment[PEER_ADDRESS_ENV[service]] = door.address
        services = sorted(self.fleet.services, key=START_ORDER.index)
        for service in services:  # in the fleet view before it counts as started
            await self.agent.start_serving(service, base_version(service), in_fleet=True)
        if REGISTRY in self.agent.front_doors:
            # Its own registry first from now on (the first host's a fallback): its TUF server is
            # on this host, and it answers when the first host is lost.
            await self.agent.prefer_registry(self.agent.front_doors[REGISTRY].address)
        self._write_state()
        doors = ", ".join(f"{s} on {d.address}" for s, d in self.agent.front_doors.items())
        say(f"host {self.fleet.host} joined the fleet: {doors}")

    def _write_state(self) -> None:
        instances = [
            {"service": i.service, "instance_id": i.instance_id, "version": i.version, "pid": i.process.pid}
            for i in self.agent.instances.values()
            if i.process is not None
        ]
        # Its front doors' addresses, as platform.json names the first host's: `parley patch` on
        # this folder calls this host's registry (the one left when the first host is lost).
        doors = {service: {"address": door.address} for service, door in self.agent.front_doors.items()}
        state: dict[str, object] = {
            "host": self.fleet.host,
            "running": True,
            "instances": instances,
            "services": doors,
        }
        if self.nats is not None:
            state["nats"] = self.nats.state()
        write_private_file(self.data_dir / HOST_STATE_FILE, json.dumps(state, indent=2).encode())
        if "gateway" in self.agent.front_doors:
            client = {
                "gateway_address": self.agent.front_doors["gateway"].address,
                "ca_cert": str(self.pki.ca_cert),
            }
            write_private_file(self.data_dir / CLIENT_FILE, json.dumps(client, indent=2).encode())

    async def run(self) -> None:
        """Follows the registry's roll-outs; an instance that crashed is started again."""
        following = asyncio.create_task(self.agent.run())
        passes = every(SUPERVISE_INTERVAL_S, self._supervise_once, name="host-supervisor")
        passes.start()
        try:
            await self._stopping.wait()
        finally:
            await passes.stop()
            following.cancel()  # its passes are idempotent: stopping mid-pass is safe
            await asyncio.gather(following, return_exceptions=True)

    async def _supervise_once(self) -> None:
        if self.nats is not None and not self.nats.process.running:
            say(f"NATS node {self.nats.name} exited; restarting it with the same configuration and store")
            with contextlib.suppress(RuntimeError):  # tried again on the next pass
                await self.nats.process.restart()
        for instance in self.agent.exited():
            say(f"{instance.instance_id} exited; restarting it")
            await self.agent.restart(instance.instance_id)
        self._write_state()

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self) -> None:
        (self.data_dir / CLIENT_FILE).unlink(missing_ok=True)
        from parley_cli.platform import START_ORDER

        for instance in await self.agent.stop(order=list(reversed(START_ORDER))):
            say(f"{instance.instance_id} stopped")
        if self.nats is not None:
            await self.nats.process.stop()
            say(f"NATS node {self.nats.name} stopped")
        write_private_file(
            self.data_dir / HOST_STATE_FILE, json.dumps({"host": self.fleet.host, "running": False}).encode()
        )


async def cmd_host_join(args: argparse.Namespace) -> int:
    data_dir = args.data_dir.resolve()
    try:
        fleet = read_bundle(args.bundle)
        environment = _storage_keyring(fleet, args.storage_keyring) | _registry_folder(fleet, args.registry_folder)
        ensure_private_dir(data_dir)
    except BundleRefused as exc:
        print(f"parley host join: {exc}", file=sys.stderr)
        return 2
    lock = UpLock(data_dir)
    try:
        lock.acquire()
    except PlatformAlreadyRunning as exc:
        print(f"parley host join: refusing to start: {exc}", file=sys.stderr)
        return 1
    try:
        _install(args.bundle, data_dir, fleet)
        host = Host(data_dir, fleet, gateway_port=args.gateway_port, environment=environment)
    except (BundleRefused, CertificateMissing) as exc:
        lock.release()
        print(f"parley host join: {exc}", file=sys.stderr)
        return 2
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, host.request_stop)
    try:
        await host.start()
        await host.run()
        return 0
    except RuntimeError as exc:
        say(f"start failed: {exc}")
        return 1
    finally:
        await host.stop()
        lock.release()


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    host = command_group(sub, "host", help="run services on more machines: one node agent per host")
    add = command(
        host, "add", cmd_host_add, help="issue a host's bundle (certificates, NATS passwords, the fleet's addresses)"
    )
    add.add_argument("name", help="the host's name, as `parley fleet` shows it")
    add.add_argument(
        "--services", default="", help="comma-separated: messaging, gateway, auth, storage, patch-registry"
    )
    add.add_argument(
        "--nats-node",
        action="store_true",
        help="the host runs one of the JetStream cluster's nodes, handed over from this host (--nats-cluster 3)",
    )
    add.add_argument("--out", type=Path, required=True, help="a new folder for the bundle")
    add.add_argument("--address", default="", help="the host's own IP address, named in its certificates")
    join = command(
        host, "join", cmd_host_join, help="run this host's services in the fleet with a bundle from `host add`"
    )
    join.add_argument("bundle", type=Path)
    join.add_argument("--gateway-port", type=int, help="the port of this host's gateway (default: a free one)")
    add_host_address_option(join)
    join.add_argument(
        "--storage-keyring",
        type=Path,
        help="the fleet's KEK keyring (the first host's secrets/storage-kek.json on shared storage), for storage",
    )
    join.add_argument(
        "--registry-folder",
        type=Path,
        help="the first host's patch-registry/ folder (TUF repository and keys) on shared storage, for the registry",
    )
