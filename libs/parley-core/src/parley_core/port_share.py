"""A weighted share of a shared port's new connections (SO_REUSEPORT), for a gateway canary.

Without a program the kernel hands each new connection to one of the port's listening sockets by
a hash of its addresses and ports, evenly: a canary beside one stable instance would take half
of the new clients. A classic BPF program attached to the port's reuseport group
(SO_ATTACH_REUSEPORT_CBPF, unprivileged, Linux 4.5+) picks the socket instead, by its index in
the group: with probability `percent` one of the canary's own sockets, else one of the others,
each by a random number the kernel draws per connection (SKF_AD_RANDOM).

Indices: a socket joins the group at the end when it starts listening, and one that leaves is
replaced by the last. The canary started after the stable instances and nothing joined since,
so its sockets are the group's last; the stable ones come before it. Counted from /proc/net/tcp*
(every listener on that address and port is in the group: only the same user's sockets can
join, and the node agent claimed the port for this platform). Should a stable instance restart
during the canary's phase (it rejoins last) the shares are off until the canary's next phase
writes a new program; an index outside the group falls back to the kernel's hash, so no
connection is lost either way. When the share an instance was given ends (100 %, or the file is
gone) it detaches its program: the kernel's even spread again. An instance never given a share
leaves the group's program alone (a stable instance restarting beside a canary).

The node agent says the share in a file (`PARLEY_SHARED_PORT_SHARE_FILE`: a percent); the
instance applies it before its gRPC server starts and again whenever the file changes.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import socket
import struct
from pathlib import Path

from parley_core.jobs import PeriodicJob, every
from parley_core.listeners import listening_sockets

log = logging.getLogger(__name__)

SO_ATTACH_REUSEPORT_CBPF = 51
SO_DETACH_REUSEPORT_BPF = 68
# Classic BPF opcodes (linux/filter.h) and the random-number ancillary load.
_LD_ABS_W = 0x20
_ALU_MOD_K = 0x94
_ALU_ADD_K = 0x04
_JGE_K = 0x35
_RET_A = 0x16
_SKF_AD_RANDOM = 0xFFFFF000 + 56  # SKF_AD_OFF + SKF_AD_RANDOM
_SCALE = 10_000  # a percent to two decimals
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp*
POLL_S = 0.2


def share_program(percent: float, canary_sockets: int, stable_sockets: int) -> list[tuple[int, int, int, int]]:
    """cBPF: with probability `percent` an index among the last `canary_sockets`, else among the first
    `stable_sockets`."""
    threshold = round(percent * _SCALE / 100)
    return [
        (_LD_ABS_W, 0, 0, _SKF_AD_RANDOM),
        (_ALU_MOD_K, 0, 0, _SCALE),
        (_JGE_K, 4, 0, threshold),  # at or above the threshold: a stable socket (instruction 7)
        (_LD_ABS_W, 0, 0, _SKF_AD_RANDOM),
        (_ALU_MOD_K, 0, 0, canary_sockets),
        (_ALU_ADD_K, 0, 0, stable_sockets),
        (_RET_A, 0, 0, 0),
        (_LD_ABS_W, 0, 0, _SKF_AD_RANDOM),
        (_ALU_MOD_K, 0, 0, stable_sockets),
        (_RET_A, 0, 0, 0),
    ]


def _attach(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    code = b"".join(struct.pack("HBBI", *instruction) for instruction in program)
    buffer = ctypes.create_string_buffer(code)
    fprog = struct.pack("@HP", len(program), ctypes.addressof(buffer))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def _inode(sock: socket.socket) -> str:
    return os.readlink(f"/proc/self/fd/{sock.fileno()}").removeprefix("socket:[").removesuffix("]")


def _proc_net_listeners(family: socket.AddressFamily) -> dict[str, str]:
    """Listening sockets of this network namespace: inode -> local address (hex, as the kernel writes it)."""
    table = Path("/proc/net/tcp6" if family == socket.AF_INET6 else "/proc/net/tcp")
    listeners = {}
    for line in table.read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == _LISTEN:
            listeners[fields[9]] = fields[1]
    return listeners


def group_sizes(own: list[socket.socket]) -> tuple[int, int]:
    """(own sockets, the group's other sockets) on the address `own` listen on."""
    listeners = _proc_net_listeners(own[0].family)
    local = listeners.get(_inode(own[0]))
    if local is None:
        return len(own), 0
    return len(own), sum(1 for address in listeners.values() if address == local) - len(own)


def apply_share(own: list[socket.socket], percent: float) -> str:
    """Gives `own` (this instance's listening sockets on the port, the group's last) `percent` % of
    the port's new connections; says what it did."""
    if not own:
        return "not listening on the shared port"
    mine, others = group_sizes(own)
    if not 0 < percent < 100 or others == 0:
        with contextlib.suppress(OSError):  # ENOENT: no program attached
            own[0].setsockopt(socket.SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)
        return f"an even share ({mine} of {mine + others} listeners)"
    _attach(own[0], share_program(percent, mine, others))
    return f"{percent:g}% of new connections ({mine} listeners beside {others})"


def read_share(path: Path) -> float:
    """The percent in the agent's share file; 100 when there is none."""
    try:
        return float(path.read_text().strip() or 100)
    except (OSError, ValueError):
        return 100.0


class ShareFile:
    """The agent's share file for this instance's listeners on `address`, applied when it changes."""

    def __init__(self, address: str, path: Path) -> None:
        self.address = address
        self.path = path
        self.applied: float | None = None  # the percent last applied
        self._seen: tuple[int, int] | None = None

    def apply(self) -> float:
        self._seen = _stamp(self.path)
        percent = read_share(self.path)
        if not 0 < percent < 100 and not (self.applied is not None and 0 < self.applied < 100):
            # No share and none given before: the group's program (a canary's) is not ours to remove.
            self.applied = percent
            return percent
        own = listening_sockets(self.address)
        try:
            log.info("shared port share", extra={"address": self.address, "share": apply_share(own, percent)})
        finally:
            for sock in own:
                sock.close()  # copies: gRPC's own descriptors stay open
        self.applied = percent
        return percent

    def following(self) -> PeriodicJob:
        """A job applying the file again whenever it changes (once started, until stopped)."""

        async def check() -> None:
            if _stamp(self.path) != self._seen:
                with contextlib.suppress(OSError):
                    self.apply()

        return every(POLL_S, check, name="port-share", first_after=POLL_S)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_mtime_ns, info.st_ino
