"""What every door of a service keeps (FrontDoor, SharedPort): its service, its client address
and the book of instances serving behind it, in the order they came."""

from __future__ import annotations

from typing import Any, Self


class DoorBook:
    def __init__(self, service: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.service = service
        self.host = host
        self.port = port
        self._backends: list[str] = []

    async def start(self) -> Self:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.stop()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def backends(self) -> list[str]:
        return list(self._backends)

    def add(self, address: str) -> None:
        if address not in self._backends:
            self._backends.append(address)

    def remove(self, address: str) -> None:
        """Out of the book, its share (if a roll-out gave it one) forgotten."""
        if address in self._backends:
            self._backends.remove(address)
        self._forget_share(address)

    def _forget_share(self, address: str) -> None:
        """What a door does when an instance leaves beyond the book (its own share bookkeeping)."""
