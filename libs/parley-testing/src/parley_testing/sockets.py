"""What a test sees of a server from the client end of a plain TCP connection."""

from __future__ import annotations

import socket

__all__ = ["closed_by_server"]


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed or reset this non-blocking connection (False: still open,
    nothing to read); a test waits on it with parley_testing.waiting, never a sleep."""
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False  # open, nothing to read
    except OSError:
        return True  # reset
