"""The client port, shared by the gateway's instances themselves: no proxy between a client and
the gateway, so the gateway sees each client's real address.

Every instance listens on the one client address with SO_REUSEPORT and the kernel spreads new
connections over the listening instances; a call's gRPC peer is then the client itself, which the
gateway's per-address rate limits and auth's per-address lockouts, registration budgets and
security events rest on (parley_core.sources).

Why this and not the front door speaking PROXY protocol v2: grpc-python cannot read a PROXY
header before its TLS handshake, so the gateway would need an acceptor of its own in front of
its gRPC server, a second copy of every byte in Python behind the front door's first one. With a
shared port no process copies client bytes at all (the front door's copy is gone too), which is
what platform CPU per message (`make bench`) counts. The front door stays for the internal
services, whose callers are named by their certificates, not their addresses.

Who may join the port: Linux lets a socket join a reuseport group only if it also sets
SO_REUSEPORT and runs as the same effective user, so no other user's process can take clients.
This agent claims the port before any instance starts (a bound socket that never listens, so it
gets no connections) and holds it while the platform runs; the claim is made only after a plain
bind (what `parley up` and any other program do first) found no listener there, so a second
platform started by the same user is told the port is busy instead of silently sharing it. Only
instances given the port (PARLEY_SHARED_LISTEN_ADDRESS) set SO_REUSEPORT (parley_core.runner).

Draining: on SIGTERM an instance first leaves the group (its listener stops listening, so the
kernel sends new connections to the others) and stops its gRPC server a moment later, which
sends GOAWAY to its clients (parley_core.listeners, with measurements). A connection the kernel
had already queued at the leaving listener but that was not yet accepted is reset (its client
reconnects) unless net.ipv4.tcp_migrate_req=1 hands it to another listener of the group; `parley
up` says so when that setting is off (see `requests_migrate`).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
from pathlib import Path

from parley_agent.door_book import DoorBook

# The setting through which an instance learns the shared client address (parley_core.config).
SHARED_LISTEN_ENV = "PARLEY_SHARED_LISTEN_ADDRESS"
# The file in which an instance finds its share of the port's new connections (parley_core.port_share).
SHARE_FILE_ENV = "PARLEY_SHARED_PORT_SHARE_FILE"
# Tells an instance that the agent holds its own listen port for it (a `claim`), so it joins it
# with SO_REUSEPORT (parley_core.runner) instead of racing other programs for a port found free.
HELD_LISTEN_PORT_ENV = "PARLEY_LISTEN_PORT_HELD"
TCP_MIGRATE_REQ = Path("/proc/sys/net/ipv4/tcp_migrate_req")


def claim(host: str, port: int) -> socket.socket:
    """A socket holding host:port for this platform's instances (port 0: a free one).

    First a plain bind, as any other program (or platform) would try it: it fails while anything
    listens there or holds the port, and succeeds over connections of an earlier run that linger
    in TIME_WAIT (SO_REUSEADDR). Then the claim, SO_REUSEPORT set before its bind, which instances
    of the same user join and a plain bind from anyone else is refused by."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if port:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    held = socket.socket(family, socket.SOCK_STREAM)
    try:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind((host, port))
    except OSError:
        held.close()
        raise
    return held


def requests_migrate() -> bool | None:
    """Whether the kernel moves connections queued at a closing listener to another listener of
    its group (Linux 5.14+); None where the setting does not exist."""
    try:
        return TCP_MIGRATE_REQ.read_text().strip() != "0"
    except OSError:
        return None


class SharedPort(DoorBook):
    """The client address of a service whose instances accept connections themselves.

    Same face as the FrontDoor, so the agent treats both alike: `add` and `remove` keep the
    book of instances serving there (the kernel balances, the listeners come and go with the
    instances' gRPC servers), `set_share` gives a roll-out's new instance its weight, and
    `instance_environment` tells a new instance where to listen and where its share is written."""

    def __init__(self, service: str, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(service, host, port)
        self._claim: socket.socket | None = None
        self._shares: Path | None = None  # where the shares are written (0700), made by `start`

    def _forget_share(self, address: str) -> None:
        """Bookkeeping only: an instance stops taking new connections when it stops listening."""
        with contextlib.suppress(FileNotFoundError):
            self.share_file(address).unlink()  # no share any more: an even one if it stays

    def share_file(self, address: str) -> Path:
        if self._shares is None:
            self._shares = Path(tempfile.mkdtemp(prefix=f"parley-{self.service}-shares-"))
        return self._shares / address.rpartition(":")[2]

    def set_share(self, address: str, percent: int) -> None:
        """`address`'s instance takes `percent` % of the port's new connections (100: an even
        share): written where it reads it, applied by the instance itself (parley_core.port_share),
        whose listeners are the port's newest."""
        target = self.share_file(address)
        with contextlib.suppress(OSError):
            if target.read_text() == f"{percent}\n":
                return  # the agent repeats itself every poll; the instance applies changes only
        staged = target.with_suffix(".new")
        staged.write_text(f"{percent}\n")
        staged.replace(target)  # whole or not at all: the instance polls it

    def instance_environment(self, address: str = "") -> dict[str, str]:
        environment = {SHARED_LISTEN_ENV: self.address}
        if address:
            environment[SHARE_FILE_ENV] = str(self.share_file(address))
        return environment

    async def start(self) -> SharedPort:
        self._claim = claim(self.host, self.port)
        self.port = self._claim.getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._claim is not None:
            self._claim.close()
            self._claim = None
        if self._shares is not None:
            shutil.rmtree(self._shares, ignore_errors=True)
            self._shares = None
