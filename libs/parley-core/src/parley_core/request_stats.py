"""Each instance's own request figures, reported in its heartbeats for roll-out health gates.

Fed by parley_core.call_stats: counts unary calls and the ones that ended in a server-side
fault; client mistakes (INVALID_ARGUMENT, NOT_FOUND, ...) are the
caller's, not a sign that a new version is unhealthy.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Sequence

import grpc

SERVER_FAULTS = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS}
)
# Upper bounds (ms) of the latency buckets heartbeats carry; one more, open-ended bucket follows.
# Fixed and shared by every version, so counts of any two heartbeats can be subtracted.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    *(1.0, 2.0, 5.0, 10.0, 20.0, 35.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 400.0, 500.0),
    *(750.0, 1000.0, 1500.0, 2000.0, 3000.0, 4000.0, 5000.0, 7500.0, 10000.0, 30000.0),
)


def bucket_percentile(counts: Sequence[int], q: float) -> float:
    """The upper bound of the bucket holding the q-quantile call (0 with no calls).

    An upper bound, never an estimate below what was measured: a gate reading it errs towards
    failing. Calls beyond the last bound count as twice it.
    """
    total = sum(counts)
    if total <= 0:
        return 0.0
    rank = max(1, int(total * q + 0.999999))  # the ceil(q * n)-th call
    seen = 0
    for index, count in enumerate(counts):
        seen += count
        if seen >= rank:
            return LATENCY_BUCKETS_MS[index] if index < len(LATENCY_BUCKETS_MS) else LATENCY_BUCKETS_MS[-1] * 2
    return LATENCY_BUCKETS_MS[-1] * 2


class RequestStats:
    """Cumulative counts (calls, faults, calls per latency bucket) and the latency samples since
    the last heartbeat read them."""

    def __init__(self, max_samples: int = 10_000) -> None:
        self.requests = 0
        self.errors = 0
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        self._latencies_ms: deque[float] = deque(maxlen=max_samples)

    def record(self, latency_ms: float, *, fault: bool) -> None:
        self.requests += 1
        self.errors += int(fault)
        self.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)] += 1
        self._latencies_ms.append(latency_ms)

    def take_p99_ms(self) -> float:
        """p99 over the calls since the previous take (0 when there were none)."""
        samples = sorted(self._latencies_ms)
        self._latencies_ms.clear()
        if not samples:
            return 0.0
        return samples[min(len(samples) - 1, int(len(samples) * 0.99))]
