"""Leaving a shared port (SO_REUSEPORT) before the gRPC server listening on it stops.

An instance that stops its gRPC server while still in the port's group takes new connections up
to the last moment, and calls arriving on them as the server shuts down are cancelled
(grpc/grpc#41785) or cut mid-handshake. Leaving the group first (the kernel then sends every new
connection to the other instances) and stopping a moment later, once the connections accepted
just before have delivered their calls, loses next to none. Measured with 8 clients each opening
a new connection per call while one of two instances was replaced four times in about 12 s
(`python -m parley_bench.drain_churn`, on this 2-core machine under other load): a plain stop
lost 0 to 9 calls per run, a front door's removal before the stop 1 to 5, leaving first 1 call
in 14 runs with net.ipv4.tcp_migrate_req off (a connection reset in the leaving listener's
accept queue) and none in 4 runs with it on.

gRPC gives no handle on its listening socket, so the socket is found among the process's
descriptors (Linux: /proc/self/fd, the only platform SO_REUSEPORT balances on) and shut down for
reading, which on a listening socket stops it listening (the kernel resets what waits in its
accept queue unless net.ipv4.tcp_migrate_req moves it to another listener). gRPC's descriptor
stays open for gRPC to close; gRPC logs one "Closing acceptor. Failed accept4: Invalid argument"
line when it next polls it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from pathlib import Path

PROCESS_FDS = Path("/proc/self/fd")
_INET = (socket.AF_INET, socket.AF_INET6)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _same_host(bound: str, host: str) -> bool:
    """gRPC binds IPv4 addresses as IPv4-mapped IPv6 sockets: ::ffff:127.0.0.1 is 127.0.0.1."""
    try:
        ours, theirs = ipaddress.ip_address(bound.partition("%")[0]), ipaddress.ip_address(host)
    except ValueError:
        return bound == host
    if isinstance(ours, ipaddress.IPv6Address) and ours.ipv4_mapped is not None:
        ours = ours.ipv4_mapped
    if ours.is_unspecified and theirs.is_unspecified:
        return True  # 0.0.0.0 and :: (a dual-stack socket) are both "every address"
    return ours == theirs


def listening_sockets(address: str) -> list[socket.socket]:
    """Copies of this process's listening sockets on `address` (host:port), oldest descriptor
    first; the caller closes them (gRPC's own descriptors stay open)."""
    host, port = _split(address)
    found = []
    seen = set()  # socket inodes: a descriptor listed may be a copy made here (its number reused)
    with contextlib.suppress(OSError):
        descriptors = sorted(int(name) for name in os.listdir(PROCESS_FDS))
        for fd in descriptors:
            with contextlib.suppress(OSError):
                link = os.readlink(PROCESS_FDS / str(fd))
                if not link.startswith("socket:") or link in seen:
                    continue
                seen.add(link)
                sock = socket.socket(fileno=os.dup(fd))
                try:
                    bound_host, bound_port = sock.getsockname()[:2] if sock.family in _INET else ("", -1)
                    if (
                        sock.type == socket.SOCK_STREAM
                        and bound_port == port
                        and _same_host(bound_host, host)
                        and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                    ):
                        found.append(sock)
                        continue
                except OSError:
                    pass
                sock.close()
    return found


def stop_listening(address: str) -> int:
    """Stops this process's listening sockets on `address` (host:port) listening; returns how many."""
    stopped = 0
    for sock in listening_sockets(address):
        with sock, contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RD)
            stopped += 1
    return stopped
