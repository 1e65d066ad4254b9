"""Sessions and their opaque rotating refresh tokens, with reuse detection; no I/O.

A refresh token is `<session id>.<256 random bits>`; only its SHA-256 digest is kept (in
events too). Each refresh replaces it; presenting a digest the session already traded away
means the token was copied, so the whole session (the token family) is revoked.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from enum import Enum

from parley_core.errors import Unauthenticated

REFRESH_TOKEN_LIFETIME_S = 30 * 24 * 3600
MAX_REFRESH_TOKEN_LENGTH = 200


def new_refresh_token(session_id: str) -> str:
    return f"{session_id}.{secrets.token_urlsafe(32)}"


def digest(refresh_token: str) -> bytes:
    return hashlib.sha256(refresh_token.encode()).digest()


def session_id_of(refresh_token: str) -> str:
    if not refresh_token or len(refresh_token) > MAX_REFRESH_TOKEN_LENGTH:
        raise Unauthenticated("refresh token is invalid; log in again")
    session_id, dot, rest = refresh_token.partition(".")
    if not dot or not rest or not session_id.isalnum():
        raise Unauthenticated("refresh token is invalid; log in again")
    return session_id


class RefreshVerdict(Enum):
    CURRENT = "current"
    REUSED = "reused"
    UNKNOWN = "unknown"


@dataclass
class Session:
    session_id: str
    user_id: str
    started_at: float
    source: str = ""
    mfa: bool = False
    current: bytes = b""
    spent: set[bytes] = field(default_factory=set)
    last_refreshed_at: float = 0.0
    revoked_reason: str = ""
    step_up_required: bool = False  # SessionStepUpRequired: the anomaly detector's response
    # What a detector's response about this session must find (anomaly_evidence.py): started
    # from an address its account never used before; refreshed from another address than its
    # last use's, soon after it (when, and from where it was last used).
    first_from_source: bool = False
    switched_source_at: float = 0.0
    last_source: str = ""
    last_seq: int = 0  # subject sequence of the newest event, for optimistic appends
    version: int = 0

    @property
    def revoked(self) -> bool:
        return bool(self.revoked_reason)

    def judge(self, presented: bytes) -> RefreshVerdict:
        if hmac.compare_digest(presented, self.current):
            return RefreshVerdict.CURRENT
        if presented in self.spent:
            return RefreshVerdict.REUSED
        return RefreshVerdict.UNKNOWN

    def rotate(self, previous: bytes, new: bytes, at: float) -> None:
        self.spent.add(previous)
        self.current = new
        self.last_refreshed_at = at


@dataclass
class SessionBook:
    sessions: dict[str, Session] = field(default_factory=dict)

    def get(self, session_id: str) -> Session | None:
        return self.sessions.get(session_id)

    def of_user(self, user_id: str) -> list[Session]:
        return sorted((s for s in self.sessions.values() if s.user_id == user_id), key=lambda s: s.started_at)
