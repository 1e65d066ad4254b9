"""The registry's own settings (PARLEY_PATCH_*), beside the platform-wide Settings."""

from __future__ import annotations

from dataclasses import fields
from datetime import timedelta
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from parley_core.net import host_address
from parley_patch_registry.findings import DeadlinePolicy
from parley_patch_registry.gate import GatePolicy


class RegistrySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PARLEY_PATCH_", extra="ignore")

    # Remediation deadlines per priority, in hours (critical 24 h, high 7 d, medium 30 d, low 90 d).
    deadline_critical_hours: float = Field(default=24, gt=0)
    deadline_high_hours: float = Field(default=7 * 24, gt=0)
    deadline_medium_hours: float = Field(default=30 * 24, gt=0)
    deadline_low_hours: float = Field(default=90 * 24, gt=0)
    deadline_unscored_hours: float = Field(default=30 * 24, gt=0)

    # The health gate: the shortest analysis window of a new instance; the time it has (from its
    # start) to appear and serve gate_min_requests calls, after which too little evidence fails.
    gate_window_seconds: float = Field(default=15.0, gt=0)
    gate_timeout_seconds: float = Field(default=90.0, gt=0)
    gate_max_error_rate: float = Field(default=0.01, ge=0, le=1)
    gate_max_p99_latency_ms: float = Field(default=500.0, gt=0)
    gate_min_requests: int = Field(default=20, ge=1)
    # Against the stable instances over the same window: p99 at most this many times theirs (or
    # gate_p99_slack_ms above it, whichever allows more).
    gate_max_p99_vs_stable: float = Field(default=2.0, ge=1)
    gate_p99_slack_ms: float = Field(default=100.0, ge=0)

    timestamp_lifetime_minutes: float = Field(default=60.0, gt=0)
    root_threshold: int = Field(default=2, ge=1)
    root_keys: int = Field(default=3, ge=1)
    # TUF repository over HTTP, on the host's address (PARLEY_HOST_ADDRESS, else loopback) for
    # agents on other hosts; 0 picks a free port (the TufRepository RPC reports the URL).
    http_host: str = Field(default_factory=host_address)
    http_port: int = 0
    # The TUF repository and its online keys; unset: <data dir>/patch-registry. A joined host's
    # registry names the first host's folder on a file system the hosts share (`host join
    # --registry-folder`): one repository, whichever instance an agent asks.
    folder: Path | None = None

    def deadline_policy(self) -> DeadlinePolicy:
        return DeadlinePolicy(
            {
                "critical": timedelta(hours=self.deadline_critical_hours),
                "high": timedelta(hours=self.deadline_high_hours),
                "medium": timedelta(hours=self.deadline_medium_hours),
                "low": timedelta(hours=self.deadline_low_hours),
                "unscored": timedelta(hours=self.deadline_unscored_hours),
            }
        )

    def gate_policy(self) -> GatePolicy:
        """Each of the policy's limits is the setting of its name after `gate_`."""
        return GatePolicy(**{f.name: getattr(self, f"gate_{f.name}") for f in fields(GatePolicy)})
