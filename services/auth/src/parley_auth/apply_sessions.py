"""Auth's projection of sessions: started, refreshed (with the addresses they came from), revoked."""

from __future__ import annotations

from parley.auth.v1.events_pb2 import (
    RefreshTokenRotated,
    SessionRevoked,
    SessionStarted,
    SessionStepUpRequired,
)

from parley_auth.applying import Recorded, applier_table
from parley_auth.auth_state import AuthState
from parley_auth.sealing import (
    REFRESH_TOKEN,
)
from parley_auth.sessions import Session

APPLIERS, applies = applier_table()


# -- sessions ------------------------------------------------------------------------------------


@applies(SessionStarted)
def _session_started(p: AuthState, event: SessionStarted, at: Recorded) -> None:
    earlier = p.sessions.of_user(event.user_id)
    p.sessions.sessions[event.session_id] = Session(
        session_id=event.session_id,
        user_id=event.user_id,
        started_at=at.at,
        source=event.source,
        first_from_source=bool(earlier) and all(s.source != event.source for s in earlier),
        last_source=event.source,
        mfa=event.mfa,
        current=p.unsealed(
            event.sealed_refresh_token_sha256, event.refresh_token_sha256, REFRESH_TOKEN, event.session_id
        ),
        last_refreshed_at=at.at,
        last_seq=at.stream_seq,
        version=1,
    )


def _session_changed(p: AuthState, session_id: str, at: Recorded) -> Session | None:
    session = p.sessions.get(session_id)
    if session is not None:
        session.last_seq, session.version = at.stream_seq, session.version + 1
    return session


@applies(RefreshTokenRotated)
def _refreshed(p: AuthState, event: RefreshTokenRotated, at: Recorded) -> None:
    if (session := _session_changed(p, event.session_id, at)) is None:
        return
    _note_source(p, session, event.source, at.at)
    owner = event.session_id
    previous = p.unsealed(event.sealed_previous_sha256, event.previous_sha256, REFRESH_TOKEN, owner)
    current = p.unsealed(event.sealed_refresh_token_sha256, event.refresh_token_sha256, REFRESH_TOKEN, owner)
    session.rotate(previous, current, at.at)


def _note_source(p: AuthState, session: Session, source: str, at: float) -> None:
    """A refresh from another address than the session's last use, soon after it: what the
    two-sources rule counts, and so what its response must find (anomaly_evidence.py)."""
    if not source:
        return
    window = p.evidence.windows.two_sources_window_s
    if session.last_source and source != session.last_source and at - session.last_refreshed_at <= window:
        session.switched_source_at = at
    session.last_source = source


@applies(SessionRevoked)
def _session_revoked(p: AuthState, event: SessionRevoked, at: Recorded) -> None:
    if (session := _session_changed(p, event.session_id, at)) is not None:
        session.revoked_reason = event.reason or "revoked"


@applies(SessionStepUpRequired)
def _step_up_required(p: AuthState, event: SessionStepUpRequired, at: Recorded) -> None:
    if (session := _session_changed(p, event.session_id, at)) is not None:
        session.step_up_required = True
