"""The per-source connection cap, on real sockets this process accepted (as gRPC's would be)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from parley_core.connections import close_over_cap


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
        closed = close_over_cap(frozenset({port}), 2)

        assert closed == {"ipv4:127.0.0.2": 3}
        assert [ended(c) for c in flood_clients[2:]] == [True] * 3
        for kept in (*flood_clients[:2], *other_clients):
            kept.sendall(b"x")  # still connected: the accepted end reads it
        assert [a.recv(1) for a in (*flood_accepted[:2], *other_accepted)] == [b"x"] * 4
        for shut in flood_accepted[2:]:
            shut.close()  # as gRPC does once its connection ends
        assert close_over_cap(frozenset({port}), 2) == {}
    finally:
        for sock in (*flood_clients, *flood_accepted, *other_clients, *other_accepted):
            sock.close()
