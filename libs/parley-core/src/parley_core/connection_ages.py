"""Which of a source's client connections go beyond the per-source cap, without I/O
(parley_core.connections reads the sockets and shuts these down): a source keeps its oldest
connections (its live streams), age being the sweep that first saw one. A socket's inode number
is no clock: the kernel hands inodes out in per-CPU batches, so a connection accepted later on
another CPU can have the lower one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# One accepted connection as a sweep finds it: its socket's inode, and the descriptor it is open on.
Socket = tuple[int, int]


class ConnectionAges:
    """The sweep that first saw each open connection, and what each source holds beyond `per_source`."""

    def __init__(self, per_source: int) -> None:
        self.per_source = per_source
        self._sweeps = 0
        self._first_seen: dict[int, int] = {}  # inode -> the sweep that first saw it

    def beyond_cap(self, open_now: Mapping[str, Sequence[Socket]]) -> dict[str, list[Socket]]:
        """One sweep over the connections open now, by source: each source's newest beyond the cap."""
        self._sweeps += 1
        inodes = {inode for sockets in open_now.values() for inode, _ in sockets}
        self._first_seen = {inode: seen for inode, seen in self._first_seen.items() if inode in inodes}
        for inode in inodes:
            self._first_seen.setdefault(inode, self._sweeps)
        over: dict[str, list[Socket]] = {}
        for source, sockets in open_now.items():
            if len(sockets) > self.per_source:
                oldest_first = sorted(sockets, key=lambda s: (self._first_seen[s[0]], s[0]))
                over[source] = oldest_first[self.per_source :]
        return over
