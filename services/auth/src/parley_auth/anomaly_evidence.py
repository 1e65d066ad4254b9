"""What auth's own records must show before it carries out a response of storage's detector; no I/O.

The detector's responses are facts on STORE (SessionRevocationDue, SessionStepUpDue,
SourceSlowdownDue), which anyone holding storage's NATS credential can record as well. So auth
acts on one only when its own stream shows what the rule that can ask for it counted, inside
that rule's window (the same PARLEY_DETECT_ variables the detector reads) widened by the age past
which the detector no longer responds and some clock skew:

- revoke or step up a session (`new_source_sensitive_change`, `session_two_sources`): the session
  started from an address its account had never logged in from (and the account had logged in
  before) less than NEW_SOURCE_WINDOW_S ago, or it was refreshed from another address than the
  one it was last used from, less than TWO_SOURCES_WINDOW_S after that use, and recently;
- slow an address down (`password_spraying`): failed logins at SPRAYING_ACCOUNTS distinct
  accounts from it (as auth counted them for its lockouts), the latest of each recent enough.

Not checked: which sensitive change followed a new-source login (a data export is on STORE,
which auth does not read). So a forged fact can still revoke or step up a session that a rule
could have named, or slow an address that really failed that many logins; nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from parley_auth.lockout import LockoutBook
from parley_auth.sessions import Session

# The detector responds only to findings about events of the last 15 minutes
# (parley_storage.detector.RESPONSE_MAX_AGE_S); the other side's clock may differ a little.
RESPONSE_MAX_AGE_S = 900.0
CLOCK_SKEW_S = 300.0


class DetectionWindows(BaseSettings):
    """The detector's thresholds that a response's evidence is judged by (PARLEY_DETECT_<NAME>,
    read by storage's detector too; the defaults are the same)."""

    model_config = SettingsConfigDict(env_prefix="PARLEY_DETECT_", extra="ignore")

    spraying_accounts: int = Field(default=10, ge=2)
    spraying_window_s: float = Field(default=600.0, gt=0)
    new_source_window_s: float = Field(default=3600.0, gt=0)
    two_sources_window_s: float = Field(default=300.0, gt=0)


@dataclass(frozen=True)
class EvidenceRules:
    windows: DetectionWindows

    def session_evidence(self, session: Session, now: float) -> str | None:
        """Why a rule could have named this session now; None when no rule could."""
        late = RESPONSE_MAX_AGE_S + CLOCK_SKEW_S
        if session.first_from_source and now - session.started_at <= self.windows.new_source_window_s + late:
            return f"started from an address new to its account ({session.source})"
        if session.switched_source_at and now - session.switched_source_at <= late:
            return f"used from a second address ({session.last_source}) soon after its last use"
        return None

    def spraying_evidence(self, lockouts: LockoutBook, source: str, now: float) -> str | None:
        """Why the spraying rule could have named this address (its budget key) now; None when not."""
        since = now - self.windows.spraying_window_s - RESPONSE_MAX_AGE_S - CLOCK_SKEW_S
        accounts = lockouts.accounts_failed_from(source, since=since)
        if accounts >= self.windows.spraying_accounts:
            return f"failed logins at {accounts} accounts from {source}"
        return None
