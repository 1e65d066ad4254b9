"""The per-source connection cap, on real sockets this process accepted (as gRPC's would be)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from parley_core.connections import ConnectionCap


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


def connect_from(server: socket.socket, host: str, count: int) -> tuple[list[socket.socket], list[socket.socket]]:
    """`count` connections from `host`: the client ends and the ends this process accepted."""
    clients, accepted = [], []
    for _ in range(count):
        clients.append(socket.create_connection(server.getsockname(), source_address=(host, 0)))
        accepted.append(server.accept()[0])
    return clients, accepted


def ended(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except OSError:
        return True


def test_a_source_keeps_its_oldest_connections_up_to_the_cap_and_others_are_untouched(
    listener: socket.socket,
) -> None:
    port = listener.getsockname()[1]
    flood_clients, flood_accepted = connect_from(listener, "127.0.0.2", 5)
    other_clients, other_accepted = connect_from(listener, "127.0.0.3", 2)
    try:
        closed = ConnectionCap(2).sweep(frozenset({port}))

        assert closed == {"ipv4:127.0.0.2": 3}
        assert [ended(c) for c in flood_clients[2:]] == [True] * 3
        for kept in (*flood_clients[:2], *other_clients):
            kept.sendall(b"x")  # still connected: the accepted end reads it
        assert [a.recv(1) for a in (*flood_accepted[:2], *other_accepted)] == [b"x"] * 4
        for shut in flood_accepted[2:]:
            shut.close()  # as gRPC does once its connection ends
        assert ConnectionCap(2).sweep(frozenset({port})) == {}
    finally:
        for sock in (*flood_clients, *flood_accepted, *other_clients, *other_accepted):
            sock.close()


def inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def accepted_on(cpu: int, listener: socket.socket, count: int) -> tuple[list[socket.socket], list[socket.socket]]:
    os.sched_setaffinity(0, {cpu})
    return connect_from(listener, "127.0.0.2", count)


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs two CPUs to accept on: the kernel hands socket inodes out in per-CPU batches",
)
def test_connections_accepted_later_on_another_cpu_are_the_newest_whatever_their_inode(
    listener: socket.socket,
) -> None:
    """Socket inode numbers come from per-CPU batches, so a later connection can have a lower one;
    the cap must still keep the connections it saw first (a source's live streams)."""
    port = listener.getsockname()[1]
    allowed = os.sched_getaffinity(0)
    cpus = sorted(allowed)[:2]
    opened: list[socket.socket] = []
    try:
        # Accept the old connections on one CPU and the new on the other; other processes draw
        # from the same batches, so try both orders until the new ones got the lower inodes.
        for attempt in range(6):
            first_cpu, later_cpu = cpus if attempt % 2 == 0 else cpus[::-1]
            cap = ConnectionCap(2)
            old_clients, old_accepted = accepted_on(first_cpu, listener, 2)
            opened += old_clients + old_accepted
            assert cap.sweep(frozenset({port})) == {}  # at the cap: seen, kept
            new_clients, new_accepted = accepted_on(later_cpu, listener, 3)
            opened += new_clients + new_accepted
            if max(map(inode, new_accepted)) < min(map(inode, old_accepted)):
                break  # what used to fool the cap: it kept the lowest inodes
            for sock in opened:
                sock.close()
            opened = []
        else:
            pytest.skip("the kernel gave the later connections higher inodes on both CPUs every time")
    finally:
        os.sched_setaffinity(0, allowed)
    try:
        assert cap.sweep(frozenset({port})) == {"ipv4:127.0.0.2": 3}
        assert [ended(c) for c in new_clients] == [True] * 3
        for kept in old_clients:
            kept.sendall(b"x")
        assert [a.recv(1) for a in old_accepted] == [b"x"] * 2
    finally:
        for sock in opened:
            sock.close()
