"""Hosts of their own on one machine: Linux network namespaces on a bridge the test creates.

Each host is a namespace with one veth pair into the bridge and an address of its own
(10.77.N.1..k/24, N chosen per run); the root namespace gets the bridge's .254 so the test
process (the client) reaches every host. Names carry a per-run token, so runs in parallel never
meet, and everything is removed on exit, even when the test fails. Needs root (`ip netns add`);
`netns_available()` says whether it can run here.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

SUBNET_PREFIX = "10.77"
ROOT_HOST = 254  # the bridge's own address in the root namespace


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def netns_available() -> str:
    """Empty when namespaces can be made here, else why not (a skip reason)."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root (`ip netns add`)"
    probe = f"pprobe{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", probe)
    except subprocess.CalledProcessError as exc:
        return f"`ip netns add` failed here: {exc.stderr.strip()}"
    _ip("netns", "delete", probe)
    return ""


@dataclass(frozen=True)
class Namespace:
    name: str
    address: str

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(argv), capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload, no-any-return]

    def kill_every_process(self) -> list[int]:
        """The host lost: SIGKILL to every process in this namespace (`ip netns pids`); their pids."""
        listed = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True, check=False)
        pids = [int(pid) for pid in listed.stdout.split()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids


@dataclass(frozen=True)
class Bridge:
    name: str
    root_address: str  # the root namespace's address on the bridge
    hosts: tuple[Namespace, ...]

    @property
    def network(self) -> str:
        """The bridge's /24, every host's address and the root namespace's in it."""
        return f"{self.root_address.rsplit('.', 1)[0]}.0/24"


@contextlib.contextmanager
def namespaces_on_a_bridge(count: int) -> Iterator[Bridge]:
    """`count` namespaces with an address each on a new bridge; torn down on exit, always."""
    token = secrets.token_hex(3)
    subnet = f"{SUBNET_PREFIX}.{secrets.randbelow(200) + 20}"
    bridge = f"pbr{token}"
    made_links: list[str] = []
    made_namespaces: list[str] = []
    try:
        _ip("link", "add", bridge, "type", "bridge")
        made_links.append(bridge)
        _ip("addr", "add", f"{subnet}.{ROOT_HOST}/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        hosts: list[Namespace] = []
        for n in range(1, count + 1):
            name, outside = f"pns{token}{n}", f"pve{token}{n}"
            _ip("netns", "add", name)
            made_namespaces.append(name)
            _ip("link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", name)
            made_links.append(outside)
            _ip("link", "set", outside, "master", bridge)
            _ip("link", "set", outside, "up")
            address = f"{subnet}.{n}"
            _ip("-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")
            _ip("-n", name, "link", "set", "lo", "up")  # a host's own instances sit behind loopback
            hosts.append(Namespace(name, address))
        yield Bridge(bridge, f"{subnet}.{ROOT_HOST}", tuple(hosts))
    finally:
        for name in made_namespaces:  # what the test started in them and left running (a failed test)
            Namespace(name, "").kill_every_process()
        for name in made_namespaces:  # deleting a namespace deletes its end of the veth pair, and so both
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
        for link in reversed(made_links):
            subprocess.run(["ip", "link", "delete", link], capture_output=True, check=False)
