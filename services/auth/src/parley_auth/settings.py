"""Settings only the auth service reads (PARLEY_AUTH_*), beside parley_core's shared ones."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from parley_auth.lockout import ACCOUNT_BACKSTOP, LockoutPolicy

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
    # Roll-out prober accounts (named canary-prober...) a joined host's node-agent certificate may
    # make: one per joined host is all its agents need; past this many prober accounts in all it
    # makes none (RESOURCE_EXHAUSTED), so a stolen certificate cannot mint members without end.
    node_agent_probers_max: int = Field(default=32, ge=1)
    # Lockouts (parley_auth.lockout): failed logins and step-up checks per account from one client
    # address, and per address over every account; past a threshold the next attempt waits
    # base seconds, doubling with each further failure up to max; a count with no failure for
    # forget-after seconds starts again from zero. The per-address threshold is higher: many
    # people may share one address (an office behind NAT), and their typos must not lock the
    # whole office out; it is still far below what guessing across accounts needs.
    lockout_threshold: int = Field(default=5, ge=1)
    lockout_source_threshold: int = Field(default=50, ge=1)
    lockout_base_seconds: float = Field(default=2.0, gt=0)
    lockout_max_seconds: float = Field(default=15 * 60.0, gt=0)
    lockout_forget_after_seconds: float = Field(default=DAY_S, gt=0)
    # The backstop per account over every address (the address is the gateway's word, and a
    # guesser may claim a new one per try): past this many failures, each further one holds the
    # account's logins back cool-down seconds; the count starts again after window seconds
    # without a failure. Defaults: 50 tries, then 12 an hour.
    lockout_account_threshold: int = Field(default=ACCOUNT_BACKSTOP.threshold, ge=1)
    lockout_account_cooldown_seconds: float = Field(default=ACCOUNT_BACKSTOP.base_s, gt=0)
    lockout_account_window_seconds: float = Field(default=ACCOUNT_BACKSTOP.forget_after_s, gt=0)

    def lockout_policy(self, *, per_source: bool) -> LockoutPolicy:
        return LockoutPolicy(
            threshold=self.lockout_source_threshold if per_source else self.lockout_threshold,
            base_s=self.lockout_base_seconds,
            max_s=self.lockout_max_seconds,
            forget_after_s=self.lockout_forget_after_seconds,
        )

    def account_backstop_policy(self) -> LockoutPolicy:
        cooldown = self.lockout_account_cooldown_seconds
        return LockoutPolicy(
            threshold=self.lockout_account_threshold,
            base_s=cooldown,
            max_s=cooldown,
            forget_after_s=self.lockout_account_window_seconds,
        )
