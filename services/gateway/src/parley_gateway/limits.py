"""The gateway's limits as an operator sets them: budgets, request size, live streams. The
decisions made with them are parley_gateway.domain.admission's."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
