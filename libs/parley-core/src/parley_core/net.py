"""Small TCP helpers: starting servers on free ports and knowing when they are up (relaying: parley_core.relay)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

_FIRST_BACKOFF_S = 0.01
_MAX_BACKOFF_S = 0.25
HOST_ADDRESS_ENV = "PARLEY_HOST_ADDRESS"
LOOPBACK = "127.0.0.1"


def host_address() -> str:
    """The address this host's front doors and NATS nodes listen on and advertise to other hosts:
    PARLEY_HOST_ADDRESS (`parley up --host-address`, `parley host join --host-address`), else
    loopback (one machine, `make run`). Instances stay on loopback behind their front doors."""
    return os.environ.get(HOST_ADDRESS_ENV, "").strip() or LOOPBACK


def free_port(host: str = "127.0.0.1") -> int:
    """Return a port the OS just reported free on ``host``; never hard-code ports in tests."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_or_free(port: int | None, host: str = "127.0.0.1") -> int:
    """``port`` when a server may listen on it now (as Go's listeners do, with SO_REUSEADDR, so a
    previous run's connections in TIME_WAIT do not count), else a free one."""
    if port:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            return port
    return free_port(host)


async def wait_for_port(host: str, port: int, timeout: float) -> None:
    """Return once ``host:port`` accepts a TCP connection, polling with a growing backoff.

    Raises TimeoutError naming the address and the last connection error, so a server that
    never came up is easy to diagnose.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    backoff = _FIRST_BACKOFF_S
    last_error: OSError | None = None
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            address = f"{host}:{port}"
            raise TimeoutError(f"nothing accepted TCP connections on {address} within {timeout:.1f}s: {last_error!r}")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=remaining)
        except OSError as exc:  # includes TimeoutError and ConnectionRefusedError
            last_error = exc
        else:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        await asyncio.sleep(min(backoff, max(deadline - loop.time(), 0)))
        backoff = min(backoff * 2, _MAX_BACKOFF_S)
