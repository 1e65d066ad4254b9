"""The rules about access: password spraying, one session in two places, a sensitive change
after a login from a new source (SEC and AUTH)."""

from __future__ import annotations

from parley_storage.detection.shapes import SessionUse, TooSoon, too_soon
from parley_storage.detection.state import RuleState
from parley_storage.detection.vocabulary import (
    NEW_SOURCE_SENSITIVE_CHANGE,
    PASSWORD_SPRAYING,
    SESSION_TWO_SOURCES,
    Anomaly,
    subject_token,
)


class AccessRules(RuleState):
    # -- password spraying (SEC login_failed) -------------------------------------------------

    def login_failed(self, *, at: float, source: str, username: str, event_id: str) -> Anomaly | None:
        self._tick(at)
        s = self.settings
        if not source:
            return None
        burst = self._spraying.add(source, at=at, item=username, event_id=event_id)
        if burst is None:
            return None
        return Anomaly(
            kind=PASSWORD_SPRAYING,
            key=subject_token(source),
            subject=f"source:{source}",
            evidence={
                "source": source,
                "accounts": str(len(burst.items)),
                "failures": str(burst.events),
                "window_s": f"{s.spraying_window_s:g}",
                "usernames": burst.listed(),
            },
            score=len(burst.items) / s.spraying_accounts,
            why=(
                f"{burst.events} failed logins for {len(burst.items)} different accounts from {source} within "
                f"{s.spraying_window_s:g}s (threshold {s.spraying_accounts} accounts)"
            ),
            at=at,
            triggers=burst.triggers,
            source=source,
        )

    # -- sessions (AUTH SessionStarted, RefreshTokenRotated) -----------------------------------

    def session_started(
        self, *, at: float, session_id: str, user_id: str, source: str, event_id: str
    ) -> Anomaly | None:
        self._tick(at)
        known = self._sources.setdefault(user_id, set())
        found = None
        if known and source and source not in known:
            login = (at, session_id, source, event_id)
            found = self._explained_late(user_id, login)
            if found is None:
                self._fresh.setdefault(user_id, []).append(login)
        if source:
            known.add(source)
        self._sessions[session_id] = SessionUse(user_id, source, at, event_id)
        return found

    def session_refreshed(
        self, *, at: float, session_id: str, user_id: str, source: str, event_id: str
    ) -> Anomaly | None:
        last = self._sessions.get(session_id)
        self._sessions[session_id] = SessionUse(user_id, source or (last.source if last else ""), at, event_id)
        if last is None or not source or not last.source or source == last.source:
            return None
        window = self.settings.two_sources_window_s
        soon = too_soon(last.at, at, window)
        if soon is None:
            return None  # a move (another network), not two places at once
        elapsed = soon.elapsed
        return Anomaly(
            kind=SESSION_TWO_SOURCES,
            key=subject_token(session_id),
            subject=f"user:{user_id}",
            evidence={
                "session_id": session_id,
                "first_source": last.source,
                "second_source": source,
                "seconds_apart": f"{elapsed:.1f}",
                "window_s": f"{window:g}",
            },
            score=soon.score,
            why=(
                f"session {session_id} was used from {last.source} and from {source} {elapsed:.0f}s apart "
                f"(under {window:g}s: one session in two places)"
            ),
            at=at,
            triggers=(last.event_id, event_id),
            user_id=user_id,
            session_id=session_id,
            source=source,
        )

    def session_ended(self, *, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    # -- a login from a new source, then a sensitive change ------------------------------------

    def sensitive_change(
        self, *, at: float, user_id: str, what: str, event_id: str, read_beside_auth: bool = False
    ) -> Anomaly | None:
        """`read_beside_auth`: the change comes from a stream read side by side with AUTH (an
        export on STORE), so the login it follows may be read after it; it waits for it."""
        window = self.settings.new_source_window_s
        fresh = [f for f in self._fresh.get(user_id, []) if too_soon(f[0], at, window)]
        self._fresh[user_id] = fresh
        if not fresh:
            if read_beside_auth:
                self._unexplained.setdefault(user_id, []).append((at, what, event_id))
            return None
        return self._new_source_change(user_id, fresh.pop(), at=at, what=what, event_id=event_id)  # one per login

    def _explained_late(self, user_id: str, login: tuple[float, str, str, str]) -> Anomaly | None:
        """A new source's login read after a change it precedes (see sensitive_change)."""
        changes = self._unexplained.get(user_id, [])
        for n, (at, what, event_id) in enumerate(changes):
            if at >= login[0] and too_soon(login[0], at, self.settings.new_source_window_s):
                del changes[n]
                return self._new_source_change(user_id, login, at=at, what=what, event_id=event_id)
        return None

    def _new_source_change(
        self, user_id: str, login: tuple[float, str, str, str], *, at: float, what: str, event_id: str
    ) -> Anomaly:
        window = self.settings.new_source_window_s
        started, session_id, source, started_id = login
        soon = too_soon(started, at, window) or TooSoon(window, 1.0)  # chosen within the window
        return Anomaly(
            kind=NEW_SOURCE_SENSITIVE_CHANGE,
            key=subject_token(user_id),
            subject=f"user:{user_id}",
            evidence={
                "change": what,
                "new_source": source,
                "session_id": session_id,
                "seconds_after_login": f"{soon.elapsed:.1f}",
                "known_sources": str(len(self._sources.get(user_id, set()) - {source})),
                "window_s": f"{window:g}",
            },
            score=soon.score,
            why=(
                f"{what} {soon.elapsed:.0f}s after a login from {source}, a source this account had never used "
                f"(window {window:g}s)"
            ),
            at=at,
            triggers=(started_id, event_id),
            user_id=user_id,
            session_id=session_id,
            source=source,
        )
