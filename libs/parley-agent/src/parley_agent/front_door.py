"""A stable address per service on this host, in front of however many instances run.

Why a TCP proxy: every caller keeps one address per service, and TLS stays end to end (the
proxy never sees plaintext). Its callers are services, named by their certificates; the
gateway, whose clients must be seen at their own addresses, shares its port instead
(parley_agent.shared_port). New connections go round-robin to the live instances, or, while a
roll-out gives a new instance a share (`set_share`: 10 % of new connections, then 50 %...), by
smooth weighted round-robin, so that exactly that share goes to it; removing an
instance only stops new connections to it, so its open HTTP/2 connections finish their calls
while it drains, and gRPC clients reconnect through the front door to a remaining instance
after the old one's GOAWAY.

A second address, the stable door, sends new connections only to instances no roll-out is
trying out (those without a share): a caller sends a call that a canary failed there again, so
a broken canary costs its users nothing (the gateway does, for calls safe to repeat).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from functools import partial

from parley_agent.door_book import DoorBook
from parley_core.relay import Relays, RelaySide, open_side

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 5.0
# Open connections one source (an IPv4 address, an IPv6 /64) may hold through each door: every
# service on a host calls from its loopback address over a few HTTP/2 connections each, so this
# only bounds a stranger that reaches a door on a host address (parley_core.relay).
CONNECTIONS_PER_SOURCE = 256


class FrontDoor(DoorBook):
    def __init__(self, service: str, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(service, host, port)
        self._turn = itertools.count()
        self._shares: dict[str, int] = {}  # address -> percent of new connections
        self._credit: dict[str, float] = {}  # smooth weighted round-robin state
        self._server: asyncio.Server | None = None
        self._stable_server: asyncio.Server | None = None
        self.stable_port = 0
        self._relays = Relays(partial(self._connect, stable=False), per_source=CONNECTIONS_PER_SOURCE)
        self._stable_relays = Relays(partial(self._connect, stable=True), per_source=CONNECTIONS_PER_SOURCE)

    @property
    def stable_address(self) -> str:
        return f"{self.host}:{self.stable_port}"

    def stable_backends(self) -> list[str]:
        """The instances no roll-out is trying out (all of them when every one is)."""
        return [a for a in self._backends if a not in self._shares] or list(self._backends)

    def _forget_share(self, address: str) -> None:
        """No new connection goes to a removed instance; its open ones run on until it closes them."""
        self._shares.pop(address, None)

    def set_share(self, address: str, percent: int) -> None:
        """`address` gets `percent` % of new connections, the others the rest evenly; 100 (or
        less than 1) ends the share: plain round-robin again."""
        if 1 <= percent < 100:
            self._shares[address] = percent
        else:
            self._shares.pop(address, None)
        self._credit.clear()

    def _weights(self, backends: list[str]) -> dict[str, float]:
        shared = {a: p for a, p in self._shares.items() if a in backends}
        others = [a for a in backends if a not in shared]
        if not shared or not others:
            return dict.fromkeys(backends, 1.0)
        rest = max(0.0, 100.0 - sum(shared.values())) / len(others)
        return {**{a: float(p) for a, p in shared.items()}, **dict.fromkeys(others, rest)}

    def _next_backend(self, backends: list[str]) -> str:
        if not any(a in self._shares for a in backends):
            return backends[next(self._turn) % len(backends)]
        weights = self._weights(backends)
        for address, weight in weights.items():
            self._credit[address] = self._credit.get(address, 0.0) + weight
        chosen = max(backends, key=lambda a: self._credit[a])
        self._credit[chosen] -= sum(weights.values())
        return chosen

    def pick(self, *, stable: bool = False) -> str | None:
        """The backend the next new connection goes to (None with none), through the stable door if `stable`."""
        backends = self.stable_backends() if stable else self._backends
        return self._next_backend(backends) if backends else None

    def instance_environment(self, address: str = "") -> dict[str, str]:
        """Nothing: an instance behind a front door listens on its own port only."""
        return {}

    async def start(self) -> FrontDoor:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._relays.accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._stable_server = await loop.create_server(self._stable_relays.accept, self.host, 0)
        self.stable_port = self._stable_server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        for server in (self._server, self._stable_server):
            if server is not None:
                server.close()
                await server.wait_closed()
        self._relays.close_all()
        self._stable_relays.close_all()

    async def _connect(self, client: RelaySide, *, stable: bool) -> RelaySide | None:
        """The next live backend in turn, relaying to `client`; a refused one is skipped, not retried forever."""
        for _ in range(len(self._backends)):
            address = self.pick(stable=stable)
            if address is None:
                break
            host, _, port = address.rpartition(":")
            try:
                return await asyncio.wait_for(open_side(client, host, int(port)), CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError) as error:
                log.warning("front door %s: backend %s refused: %s", self.service, address, error)
        log.warning("front door %s: no live instance for a new connection", self.service)
        return None
