"""The shapes several rules share: a burst of distinct things in a sliding window, a second event
too soon after a first, a rate against its own baseline. No I/O."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from parley_storage.detection.vocabulary import DetectionSettings


@dataclass(frozen=True)
class Burst:
    """What a `DistinctBurst` counted when it reached its threshold."""

    items: tuple[str, ...]  # the distinct things, in the order first seen
    events: int  # every event in the window, repeats included
    triggers: tuple[str, ...]  # the first event for each item

    def listed(self, most: int = 20) -> str:
        return ",".join(sorted(self.items)[:most])


@dataclass
class DistinctBurst:
    """The shape four rules share: one key (a source, an operator, an account) touching `threshold`
    distinct things (accounts, channels, people) within a sliding window of `window_s` seconds,
    reported once per key and window."""

    threshold: int
    window_s: float
    _windows: dict[str, deque[tuple[float, str, str]]] = field(default_factory=dict)
    _fired: dict[str, float] = field(default_factory=dict)

    def add(self, key: str, *, at: float, item: str, event_id: str) -> Burst | None:
        window = self._windows.setdefault(key, deque())
        window.append((at, item, event_id))
        while window and window[0][0] < at - self.window_s:
            window.popleft()
        firsts: dict[str, str] = {}
        for _, seen, eid in window:
            firsts.setdefault(seen, eid)
        if len(firsts) < self.threshold or at - self._fired.get(key, -math.inf) < self.window_s:
            return None
        self._fired[key] = at
        return Burst(items=tuple(firsts), events=len(window), triggers=tuple(firsts.values()))

    def sweep(self, at: float) -> None:
        """Forget keys with nothing in their window any more."""
        for key in [k for k, window in self._windows.items() if not window or window[-1][0] < at - self.window_s]:
            del self._windows[key]
        for key in [k for k, fired in self._fired.items() if fired < at - self.window_s]:
            del self._fired[key]


@dataclass(frozen=True)
class TooSoon:
    """What `too_soon` measured: how long after the first event the second came, and the score."""

    elapsed: float
    score: float  # limit / elapsed (at least a second): the sooner, the higher


def too_soon(first_at: float, at: float, limit: float) -> TooSoon | None:
    """The shape the pair rules share: a second event less than `limit` seconds after a first
    (one session used from two places, a sensitive change after a new source's login, an approval
    after its planning, an approval by an account made shortly before)."""
    elapsed = max(at - first_at, 0.0)
    return TooSoon(elapsed, limit / max(elapsed, 1.0)) if elapsed < limit else None


@dataclass
class SessionUse:
    user_id: str
    source: str
    at: float
    event_id: str


@dataclass
class Rate:
    """Messages counted per bucket, and an exponentially weighted mean and variance of the
    finished buckets: an account's own baseline, or a channel's from everyone in it."""

    bucket: int = -1
    count: int = 0
    mean: float = 0.0
    var: float = 0.0
    buckets_seen: int = 0
    fired_bucket: int = -1

    def count_in(self, bucket: int, settings: DetectionSettings) -> bool:
        """Counts one message in `bucket`, first closing the finished bucket and the empty ones
        since (at most a day's worth); False for an older clock's event, counted in no bucket."""
        if bucket > self.bucket:
            closed = [self.count] + [0] * min(bucket - self.bucket - 1, int(86400 // settings.rate_bucket_s))
            for count in closed:
                diff = count - self.mean
                incr = settings.rate_alpha * diff
                self.mean += incr
                self.var = (1 - settings.rate_alpha) * (self.var + diff * incr)
                self.buckets_seen += 1
            self.bucket, self.count = bucket, 0
        elif bucket < self.bucket:
            return False
        self.count += 1
        return True

    def threshold(self, settings: DetectionSettings, floor: int) -> float:
        return max(float(floor), self.mean + settings.rate_deviations * math.sqrt(self.var))
