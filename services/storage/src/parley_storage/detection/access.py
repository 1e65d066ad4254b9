"""The rules about access: password spraying, one session in two places, a sensitive change
after a login from a new source (SEC and AUTH)."""

from __future__ import annotations

from parley_storage.detection.bursts import SPRAYING
from parley_storage.detection.pairs import NEW_SOURCE_CHANGE, TWO_SOURCES
from parley_storage.detection.shapes import SessionUse, too_soon
from parley_storage.detection.state import RuleState
from parley_storage.detection.vocabulary import Anomaly


class AccessRules(RuleState):
    # -- password spraying (SEC login_failed) -------------------------------------------------

    def login_failed(self, *, at: float, source: str, username: str, event_id: str) -> Anomaly | None:
        self._tick(at)
        if not source:
            return None
        return self._burst(SPRAYING, source, at=at, items=(username,), event_id=event_id)

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
        # None when far enough apart: a move (another network), not two places at once
        return TWO_SOURCES.finding(
            self.settings,
            first=(last.at, last.event_id),
            at=at,
            event_id=event_id,
            key=session_id,
            subject=f"user:{user_id}",
            facts={"session_id": session_id, "first_source": last.source, "second_source": source},
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
    ) -> Anomaly | None:
        started, session_id, source, started_id = login
        known = len(self._sources.get(user_id, set()) - {source})
        return NEW_SOURCE_CHANGE.finding(
            self.settings,
            first=(started, started_id),
            at=at,
            event_id=event_id,
            key=user_id,
            subject=f"user:{user_id}",
            facts={"change": what, "new_source": source, "session_id": session_id, "known_sources": str(known)},
            user_id=user_id,
            session_id=session_id,
            source=source,
        )
