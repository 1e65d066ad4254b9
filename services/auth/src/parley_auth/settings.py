"""Settings only the auth service reads (PARLEY_AUTH_*), beside parley_core's shared ones."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DAY_S = 24 * 3600.0


class AuthSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PARLEY_AUTH_", extra="ignore")

    # A new access-token signing key this often; 0 turns automatic rotation off (manual
    # `parley admin rotate-signing-key` still works). The replaced key is retired once every
    # token it signed has expired.
    signing_key_rotation_seconds: float = Field(default=30 * DAY_S, ge=0)
    # Access-token lifetime; the issue caps it at 15 minutes.
    access_token_seconds: int = Field(default=15 * 60, ge=5, le=15 * 60)
    # Open self-registration: attempts per client address per hour, taken or free alike.
    registrations_per_source_per_hour: int = Field(default=10, ge=1)
