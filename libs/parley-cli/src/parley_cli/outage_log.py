"""`parley up`'s own warnings (its front doors, its NATS connections) as its other lines: with
its `[parley]` prefix, and once per outage. While a service or nats-server is down, a front door
warns at every new connection and a NATS client at every reconnect attempt; unlimited, those
lines drowned the ones that say what happened. The first line of a kind is shown; its repeats
are counted, and once none came for QUIET_S the outage counts as over and its count is shown."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

QUIET_S = 10.0  # no repeat for this long: the outage is over (the next one is shown again)


@dataclass
class _Outage:
    first: str  # the line shown
    repeats: int
    last: float


class OncePerOutage(logging.Handler):
    """Root handler for WARNING and worse (what Python's last-resort handler printed bare)."""

    def __init__(self, say: Callable[[str], None], clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(logging.WARNING)
        self._say = say
        self._clock = clock
        self._outages: dict[tuple[str, object], _Outage] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.close_quiet_outages()
        key = (record.name, record.msg)  # the message's template: its details vary from one repeat to the next
        if outage := self._outages.get(key):
            outage.repeats += 1
            outage.last = self._clock()
            return
        self._outages[key] = _Outage(record.getMessage(), 0, self._clock())
        self._say(self._outages[key].first)

    def close_quiet_outages(self) -> None:
        """Says how often each outage that has gone quiet repeated; `parley up` calls it every pass."""
        now = self._clock()
        for key, outage in list(self._outages.items()):
            if now - outage.last < QUIET_S:
                continue
            del self._outages[key]
            if outage.repeats:
                self._say(f"{outage.first} (and {outage.repeats} more like it; none for {QUIET_S:.0f} s now)")
