"""How far each stream has been archived, so a query can wait for the writes it must see.

A client that joins a channel (or sends) and then reads history expects its own change to
count; the archive trails the stream by the archive lag, so history waits for it, briefly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping


class ArchiveProgress:
    def __init__(self, initial: dict[str, int] | None = None) -> None:
        self._archived: dict[str, int] = dict(initial or {})
        self._changed = asyncio.Condition()

    def archived(self, stream: str) -> int:
        return self._archived.get(stream, 0)

    async def advance(self, stream: str, seq: int) -> None:
        async with self._changed:
            if seq > self._archived.get(stream, 0):
                self._archived[stream] = seq
                self._changed.notify_all()

    async def wait_for(self, stream: str, seq: int, *, timeout: float) -> bool:
        """True once `stream` is archived up to `seq`; False if that takes longer than `timeout`."""
        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.archived(stream) >= seq), timeout)
        except TimeoutError:
            return False
        return True

    async def wait_past(self, seen: Mapping[str, int], *, timeout: float) -> bool:
        """True once any of these streams is archived beyond where `seen` has it; False after
        `timeout` without (a watcher of several streams: security_feed.py)."""

        def moved() -> bool:
            return any(self.archived(stream) > seq for stream, seq in seen.items())

        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(moved), timeout)
        except TimeoutError:
            return False
        return True
