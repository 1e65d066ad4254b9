"""Whether one client call may proceed, before any internal call is made: its size, its source's
and its user's budgets (token buckets), and the live streams one user may hold open.

A source is the client's real address (parley_core.sources.budget_key: an IPv4 address, an
IPv6 /64), never a proxy's: no client's flood spends another address's budget. A budget is per
gateway instance: with N instances sharing the client port a client gets at most N times the
budget, which still bounds what one client can cost the platform.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from parley_core.errors import ResourceExhausted
from parley_core.rate import TokenBuckets

if TYPE_CHECKING:
    from parley_gateway.limits import GatewayLimits

__all__ = ["Admission", "LiveStreamCaps", "RateLimited"]


class RateLimited(ResourceExhausted):
    """Over budget; `retry_after_s` says when one more call will be accepted."""

    def __init__(self, what: str, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(f"too many requests from this {what}; retry in {retry_after_s * 1000:.0f} ms")


class Admission:
    """Decides whether one client call may proceed; `now` is a monotonic clock's reading."""

    def __init__(self, limits: GatewayLimits) -> None:
        self.limits = limits
        self._users = TokenBuckets(rate=limits.user_rate, burst=limits.user_burst)
        self._sources = TokenBuckets(rate=limits.source_rate, burst=limits.source_burst)

    def check_size(self, request_bytes: int) -> None:
        if request_bytes > self.limits.max_request_bytes:
            raise ResourceExhausted(
                f"request is {request_bytes} bytes; the limit is {self.limits.max_request_bytes} bytes"
            )

    def admit(self, *, source: str, user_id: str | None, now: float) -> None:
        """Spends one of the source's calls, then one of the user's (None: an anonymous call)."""
        if wait := self._sources.take(source, now):
            raise RateLimited("address", _round_up(wait))
        if user_id is not None and (wait := self._users.take(user_id, now)):
            raise RateLimited("user", _round_up(wait))


class LiveStreamCaps:
    """Per-user caps on live streams: how many each user holds open here, and how wide each is."""

    def __init__(self, limits: GatewayLimits) -> None:
        self.limits = limits
        self._open: Counter[str] = Counter()

    @contextmanager
    def held(self, user_id: str) -> Iterator[None]:
        """One of `user_id`'s slots for as long as the stream runs."""
        cap = self.limits.live_streams_per_user
        if self._open[user_id] >= cap:
            raise ResourceExhausted(
                f"at most {cap} live streams per user are open at once; "
                "close one of yours (another device or tab) or follow more channels in one stream"
            )
        self._open[user_id] += 1
        try:
            yield
        finally:
            self._open[user_id] -= 1
            if not self._open[user_id]:
                del self._open[user_id]

    @property
    def open_streams(self) -> int:
        return sum(self._open.values())

    def check_channels(self, count: int) -> None:
        cap = self.limits.live_channels_per_stream
        if count > cap:
            raise ResourceExhausted(
                f"at most {cap} channels per live stream; name the channels to follow, or split them over streams"
            )


def _round_up(seconds: float) -> float:
    return math.ceil(seconds * 1000) / 1000
