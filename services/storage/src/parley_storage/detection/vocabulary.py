"""The detection's vocabulary: the rules' names, what each asks for, the deployment's thresholds
(PARLEY_DETECT_*), and the Anomaly a rule returns."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

Response = Literal["alert", "revoke_session", "step_up", "slow_source"]


class AnomalyKind(StrEnum):
    """The rules by name: an anomaly's kind, in its subject and in PARLEY_DETECT_RESPONSES."""

    PASSWORD_SPRAYING = "password_spraying"  # noqa: S105 - a rule name
    NEW_SOURCE_SENSITIVE_CHANGE = "new_source_sensitive_change"
    SEND_RATE = "send_rate"
    SESSION_TWO_SOURCES = "session_two_sources"
    MASS_ERASURE = "mass_erasure"
    SHORT_RETENTION = "short_retention"
    RUSHED_ROLLOUT = "rushed_rollout"
    MANY_CHANNELS_JOINED = "many_channels_joined"
    MANY_USERS_MESSAGED = "many_users_messaged"
    NEW_ACCOUNT_APPROVAL = "new_account_approval"


KINDS = tuple(AnomalyKind)
# Rules whose anomaly names a session; only those can have it revoked.
SESSION_KINDS = frozenset({AnomalyKind.NEW_SOURCE_SENSITIVE_CHANGE, AnomalyKind.SESSION_TWO_SOURCES})
# Rules whose anomaly names a client address; only those can have it slowed down.
SOURCE_KINDS = frozenset({AnomalyKind.PASSWORD_SPRAYING})
DEFAULT_RESPONSES: dict[str, Response] = {
    AnomalyKind.PASSWORD_SPRAYING: "slow_source",
    AnomalyKind.NEW_SOURCE_SENSITIVE_CHANGE: "revoke_session",
    AnomalyKind.SEND_RATE: "alert",
    AnomalyKind.SESSION_TWO_SOURCES: "revoke_session",
    AnomalyKind.MASS_ERASURE: "alert",
    AnomalyKind.SHORT_RETENTION: "alert",
    AnomalyKind.RUSHED_ROLLOUT: "alert",
    AnomalyKind.MANY_CHANNELS_JOINED: "alert",
    AnomalyKind.MANY_USERS_MESSAGED: "alert",
    AnomalyKind.NEW_ACCOUNT_APPROVAL: "alert",
}
_ANOMALY_IDS = uuid.UUID("6f1f3a52-59d8-4c1e-9a43-0b7e2e3c9d11")


class DetectionSettings(BaseSettings):
    """Per-deployment thresholds (PARLEY_DETECT_<NAME>)."""

    model_config = SettingsConfigDict(env_prefix="PARLEY_DETECT_", extra="ignore")

    enabled: bool = True
    # Password spraying: failed logins for this many distinct accounts from one source ...
    spraying_accounts: int = Field(default=10, ge=2)
    # ... within this many seconds.
    spraying_window_s: float = Field(default=600.0, gt=0)
    # A sensitive change this soon after a login from a source the account never used before.
    new_source_window_s: float = Field(default=3600.0, gt=0)
    # Send rate: messages counted per bucket of this length ...
    rate_bucket_s: float = Field(default=60.0, gt=0)
    # ... an exponentially weighted mean and variance of the account's past buckets (weight of
    # the newest) ...
    rate_alpha: float = Field(default=0.2, gt=0, lt=1)
    # ... fires above mean + k standard deviations ...
    rate_deviations: float = Field(default=4.0, gt=0)
    # ... and never below this many messages in one bucket (a quiet account's first burst).
    rate_floor: int = Field(default=30, ge=1)
    # One account's messages in one channel in a bucket, against that channel's usual traffic from
    # everyone (the same weight and deviations), and never below this many: an account whose own
    # baseline is high (a bot) flooding a channel that usually hears little.
    rate_channel_floor: int = Field(default=30, ge=1)
    # One session used from a second source within this many seconds of its last use elsewhere.
    two_sources_window_s: float = Field(default=300.0, gt=0)
    # Mass erasure: this many accounts erased by one operator ...
    erasure_count: int = Field(default=5, ge=2)
    # ... within this many seconds.
    erasure_window_s: float = Field(default=3600.0, gt=0)
    # Many channels joined: this many distinct channels joined by one account ...
    channels_joined: int = Field(default=15, ge=2)
    # ... within this many seconds.
    channels_joined_window_s: float = Field(default=600.0, gt=0)
    # Many users messaged: direct messages to this many distinct people from one account ...
    users_messaged: int = Field(default=15, ge=2)
    # ... within this many seconds.
    users_messaged_window_s: float = Field(default=600.0, gt=0)
    # A retention policy of this many days or fewer (0, keep forever, never fires).
    short_retention_days: int = Field(default=1, ge=1)
    # A roll-out approved sooner than this after it was planned.
    rollout_min_review_s: float = Field(default=600.0, gt=0)
    # A roll-out approved by an account registered less than this long before (seconds).
    new_approver_age_s: float = Field(default=7 * 86400.0, gt=0)
    # How long a slowed source's logins are held back.
    slow_source_s: float = Field(default=900.0, gt=0, le=86400)
    # What each rule asks for, as JSON: {"send_rate": "alert", ...}; unnamed rules keep the default.
    responses: dict[str, Response] = Field(default_factory=dict)

    def response(self, kind: str) -> Response:
        chosen = self.responses.get(kind, DEFAULT_RESPONSES.get(kind, "alert"))
        possible = kind in SESSION_KINDS if chosen in ("revoke_session", "step_up") else kind in SOURCE_KINDS
        return chosen if chosen == "alert" or possible else "alert"


@dataclass(frozen=True)
class Anomaly:
    kind: AnomalyKind
    key: str  # the subject token: parley.storage.anomaly.<kind>.<key>
    subject: str
    evidence: dict[str, str]
    score: float
    why: str
    at: float
    triggers: tuple[str, ...]
    user_id: str = ""
    session_id: str = ""
    source: str = ""

    @property
    def event_id(self) -> str:
        return uuid.uuid5(_ANOMALY_IDS, f"{self.kind}|{'|'.join(self.triggers)}").hex


def subject_token(text: str) -> str:
    """A NATS subject token for an address or id (no dots, wildcards or spaces)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:128] or "_"
