"""Per-user and per-source request budgets (token buckets) and request size limits, without I/O.

A source is the client's real address (parley_core.sources.budget_key: an IPv4 address, an
IPv6 /64), never a proxy's: no client's flood spends another address's budget. A budget is per
gateway instance: with N instances sharing the client port a client gets at most N times the
budget, which still bounds what one client can cost the platform.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from parley_core.errors import ResourceExhausted
from parley_core.rate import TokenBuckets

__all__ = ["Admission", "GatewayLimits", "LiveStreamCaps", "RateLimited", "TokenBuckets"]


class GatewayLimits(BaseSettings):
    """Read from PARLEY_GATEWAY_* environment variables (e.g. PARLEY_GATEWAY_USER_RATE=50)."""

    model_config = SettingsConfigDict(env_prefix="PARLEY_GATEWAY_", extra="ignore")

    user_rate: float = Field(default=50.0, gt=0)  # sustained calls per second per user
    user_burst: float = Field(default=200.0, ge=1)
    # Per client address, logged in or not; generous, since many users may share one address (NAT).
    source_rate: float = Field(default=200.0, gt=0)
    source_burst: float = Field(default=500.0, ge=1)
    max_request_bytes: int = Field(default=64 * 1024, ge=1024)
    live_buffer: int = Field(default=1000, ge=1)  # events queued per live stream before resync
    # Live streams (Subscribe) one user may hold open at once on this gateway, and channels in one:
    # a few devices and tabs each, with room; the bound on what one user can make a gateway hold.
    live_streams_per_user: int = Field(default=20, ge=1)
    live_channels_per_stream: int = Field(default=500, ge=1)


class RateLimited(ResourceExhausted):
    """Over budget; `retry_after_s` says when one more call will be accepted."""

    def __init__(self, what: str, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(f"too many requests from this {what}; retry in {retry_after_s * 1000:.0f} ms")


class Admission:
    """Decides whether one client call may proceed, before any internal call is made."""

    def __init__(self, limits: GatewayLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._users = TokenBuckets(rate=limits.user_rate, burst=limits.user_burst, clock=clock)
        self._sources = TokenBuckets(rate=limits.source_rate, burst=limits.source_burst, clock=clock)

    def check_size(self, request_bytes: int) -> None:
        if request_bytes > self.limits.max_request_bytes:
            raise ResourceExhausted(
                f"request is {request_bytes} bytes; the limit is {self.limits.max_request_bytes} bytes"
            )

    def admit(self, *, source: str, user_id: str | None) -> None:
        if wait := self._sources.take(source):
            raise RateLimited("address", _round_up(wait))
        if user_id is not None and (wait := self._users.take(user_id)):
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
