"""A cap on the connections one client source holds open to a client-facing port.

gRPC accepts connections in its core, with no hook for Python to refuse one, and the gateway's
instances accept them on the shared client port themselves (parley_agent.shared_port: no proxy
in front to count them). A source that opens connections and never speaks (no TLS handshake)
would otherwise hold them, up to the process's descriptor limit, until no one else's login got
through: 22,000 idle connections from one address did exactly that. gRPC's own options bound
how long each may stay (grpc.server_handshake_timeout_ms, grpc.max_connection_idle_ms: see
runner.client_connection_options), but not how many one source may open meanwhile.

So each client-facing process sweeps its own accepted sockets (they are its descriptors, as in
parley_core.listeners: /proc/self/fd, Linux) every SWEEP_INTERVAL_S, groups them by source as
every other per-source budget does (sources.budget_key: an IPv4 address, an IPv6 /64), and shuts
down a source's newest connections beyond the cap (parley_core.connection_ages decides which: a
source's oldest, its live streams, stay). gRPC then sees the connection end and closes its
descriptor.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
from collections import defaultdict
from pathlib import Path

from parley_core.connection_ages import ConnectionAges
from parley_core.jobs import PeriodicJob, every
from parley_core.sources import budget_key

log = logging.getLogger(__name__)

PROCESS_FDS = Path("/proc/self/fd")
SWEEP_INTERVAL_S = 0.5


def peer_budget(peer_host: str) -> str:
    """The per-source budget a socket's peer counts against (sources.budget_key), from its
    address in the gateway's source form (sources.client_address): ipv4:a.b.c.d or ipv6:[...]."""
    ip = ipaddress.ip_address(peer_host.partition("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return budget_key(f"ipv4:{ip}" if ip.version == 4 else f"ipv6:[{ip}]")


def _accepted(ports: frozenset[int]) -> dict[str, list[tuple[int, int]]]:
    """This process's connected TCP sockets on one of `ports`, as (inode, fd) per source budget."""
    by_source: dict[str, list[tuple[int, int]]] = defaultdict(list)
    with contextlib.suppress(OSError):
        for name in os.listdir(PROCESS_FDS):
            with contextlib.suppress(OSError, ValueError):
                target = os.readlink(PROCESS_FDS / name)
                if not target.startswith("socket:["):
                    continue
                fd = int(name)
                with socket.socket(fileno=os.dup(fd)) as sock:  # a copy: gRPC's own stays open
                    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
                        continue
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                        continue  # a listener
                    if sock.getsockname()[1] not in ports:
                        continue  # not accepted here (an outgoing connection, another port)
                    peer = sock.getpeername()[0]
                by_source[peer_budget(peer)].append((int(target[len("socket:[") : -1]), fd))
    return by_source


class ConnectionCap:
    """Keeps each source at most `per_source` connections on `ports`, its oldest ones
    (which ones: parley_core.connection_ages)."""

    def __init__(self, per_source: int) -> None:
        self.per_source = per_source
        self._ages = ConnectionAges(per_source)

    def sweep(self, ports: frozenset[int]) -> dict[str, int]:
        """Shuts down each source's newest connections beyond the cap; returns how many per source."""
        closed: dict[str, int] = {}
        for source, sockets in self._ages.beyond_cap(_accepted(ports)).items():
            for inode, fd in sockets:
                with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as sock:
                    if os.fstat(sock.fileno()).st_ino != inode:
                        continue  # closed since, its number reused by another connection
                    sock.shutdown(socket.SHUT_RDWR)  # ends the connection for gRPC too, which closes its fd
                    closed[source] = closed.get(source, 0) + 1
        return closed


def connection_cap_job(ports: set[int], per_source: int) -> PeriodicJob:
    """Every SWEEP_INTERVAL_S once started: close what any source holds beyond the cap, on the
    ports in `ports` at that moment (a listener opened later joins by being added)."""
    cap = ConnectionCap(per_source)

    async def sweep() -> None:
        closed = await asyncio.to_thread(cap.sweep, frozenset(ports))
        for source, count in closed.items():
            log.warning(
                "closed connections over the per-source cap",
                extra={
                    "security_event": "connections_over_cap",
                    "source": source,
                    "closed": count,
                    "cap": per_source,
                },
            )

    return every(SWEEP_INTERVAL_S, sweep, name="connection-cap")
