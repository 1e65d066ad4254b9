"""Anomaly detection rules: pure functions of the events, no I/O (the detector feeds them).

Each rule is a small, explainable statistic over the streams storage already reads, keyed by
whom it concerns, timed by the events' own `occurred_at` (so a replay reaches the same findings
as the live run, in the same order). A rule that fires returns an `Anomaly`: its kind, whom it
concerns, the evidence it counted, a score (observed / threshold, so 1.0 is at the threshold) and
one sentence saying why. The id of an anomaly is derived from the events that made it fire, so a
replay after a restart finds the same ids and the detector records nothing twice.

The thresholds are the deployment's (one organisation per platform), from PARLEY_DETECT_*
variables with the defaults below; docs/security.md "Anomaly detection" lists them.

The behaviour rules (send rate, channels joined, people messaged) judge a person's use of their
account, so they leave out the platform's synthetic accounts (the roll-out probers,
parley_core.synthetic), whose sends are the platform's own. Whether an account is one is on its
registration (AUTH), read side by side with its messages (MSG): a behaviour finding about an
account whose registration was not read yet waits for it, and is dropped if it was a prober's.
"""

from __future__ import annotations

import math
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

Response = Literal["alert", "revoke_session", "step_up", "slow_source"]

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
KINDS = (
    PASSWORD_SPRAYING,
    NEW_SOURCE_SENSITIVE_CHANGE,
    SEND_RATE,
    SESSION_TWO_SOURCES,
    MASS_ERASURE,
    SHORT_RETENTION,
    RUSHED_ROLLOUT,
    MANY_CHANNELS_JOINED,
    MANY_USERS_MESSAGED,
    NEW_ACCOUNT_APPROVAL,
)
# Rules whose anomaly names a session; only those can have it revoked.
SESSION_KINDS = frozenset({NEW_SOURCE_SENSITIVE_CHANGE, SESSION_TWO_SOURCES})
# Rules whose anomaly names a client address; only those can have it slowed down.
SOURCE_KINDS = frozenset({PASSWORD_SPRAYING})
DEFAULT_RESPONSES: dict[str, Response] = {
    PASSWORD_SPRAYING: "slow_source",
    NEW_SOURCE_SENSITIVE_CHANGE: "revoke_session",
    SEND_RATE: "alert",
    SESSION_TWO_SOURCES: "revoke_session",
    MASS_ERASURE: "alert",
    SHORT_RETENTION: "alert",
    RUSHED_ROLLOUT: "alert",
    MANY_CHANNELS_JOINED: "alert",
    MANY_USERS_MESSAGED: "alert",
    NEW_ACCOUNT_APPROVAL: "alert",
}
SWEEP_EVERY = 10_000
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
    kind: str
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


@dataclass(frozen=True)
class Burst:
    """What a `DistinctBurst` counted when it reached its threshold."""

    items: tuple[str, ...]  # the distinct things, in the order first seen
    events: int  # every event in the window, repeats included
    triggers: tuple[str, ...]  # the first event for each item

    def listed(self, most: int = 20) -> str:
        return ",".join(sorted(self.items)[:most])


@dataclass
class DistinctBurst:
    """The shape four rules share: one key (a source, an operator, an account) touching `threshold`
    distinct things (accounts, channels, people) within a sliding window of `window_s` seconds,
    reported once per key and window."""

    threshold: int
    window_s: float
    _windows: dict[str, deque[tuple[float, str, str]]] = field(default_factory=dict)
    _fired: dict[str, float] = field(default_factory=dict)

    def add(self, key: str, *, at: float, item: str, event_id: str) -> Burst | None:
        window = self._windows.setdefault(key, deque())
        window.append((at, item, event_id))
        while window and window[0][0] < at - self.window_s:
            window.popleft()
        firsts: dict[str, str] = {}
        for _, seen, eid in window:
            firsts.setdefault(seen, eid)
        if len(firsts) < self.threshold or at - self._fired.get(key, -math.inf) < self.window_s:
            return None
        self._fired[key] = at
        return Burst(items=tuple(firsts), events=len(window), triggers=tuple(firsts.values()))

    def sweep(self, at: float) -> None:
        """Forget keys with nothing in their window any more."""
        for key in [k for k, window in self._windows.items() if not window or window[-1][0] < at - self.window_s]:
            del self._windows[key]
        for key in [k for k, fired in self._fired.items() if fired < at - self.window_s]:
            del self._fired[key]


@dataclass(frozen=True)
class TooSoon:
    """What `too_soon` measured: how long after the first event the second came, and the score."""

    elapsed: float
    score: float  # limit / elapsed (at least a second): the sooner, the higher


def too_soon(first_at: float, at: float, limit: float) -> TooSoon | None:
    """The shape the pair rules share: a second event less than `limit` seconds after a first
    (one session used from two places, a sensitive change after a new source's login, an approval
    after its planning, an approval by an account made shortly before)."""
    elapsed = max(at - first_at, 0.0)
    return TooSoon(elapsed, limit / max(elapsed, 1.0)) if elapsed < limit else None


@dataclass
class _SessionUse:
    user_id: str
    source: str
    at: float
    event_id: str


@dataclass
class _Rate:
    """Messages counted per bucket, and an exponentially weighted mean and variance of the
    finished buckets: an account's own baseline, or a channel's from everyone in it."""

    bucket: int = -1
    count: int = 0
    mean: float = 0.0
    var: float = 0.0
    buckets_seen: int = 0
    fired_bucket: int = -1

    def count_in(self, bucket: int, settings: DetectionSettings) -> bool:
        """Counts one message in `bucket`, first closing the finished bucket and the empty ones
        since (at most a day's worth); False for an older clock's event, counted in no bucket."""
        if bucket > self.bucket:
            closed = [self.count] + [0] * min(bucket - self.bucket - 1, int(86400 // settings.rate_bucket_s))
            for count in closed:
                diff = count - self.mean
                incr = settings.rate_alpha * diff
                self.mean += incr
                self.var = (1 - settings.rate_alpha) * (self.var + diff * incr)
                self.buckets_seen += 1
            self.bucket, self.count = bucket, 0
        elif bucket < self.bucket:
            return False
        self.count += 1
        return True

    def threshold(self, settings: DetectionSettings, floor: int) -> float:
        return max(float(floor), self.mean + settings.rate_deviations * math.sqrt(self.var))


@dataclass
class Rules:
    """Every rule's state, fed one event at a time by the detector, in each stream's order."""

    settings: DetectionSettings = field(default_factory=DetectionSettings)
    _sources: dict[str, set[str]] = field(default_factory=dict)
    _fresh: dict[str, list[tuple[float, str, str, str]]] = field(default_factory=dict)
    # Sensitive changes read from a stream beside AUTH (a data export on STORE) that no fresh login
    # explained yet: the login may be read after them. user id -> [(at, what, event id)]
    _unexplained: dict[str, list[tuple[float, str, str]]] = field(default_factory=dict)
    _sessions: dict[str, _SessionUse] = field(default_factory=dict)
    _rates: dict[str, _Rate] = field(default_factory=dict)
    _channel_rates: dict[str, _Rate] = field(default_factory=dict)
    # (channel id, sender id) -> (bucket, the sender's messages in that channel in it)
    _in_channel: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    _planned: dict[str, tuple[float, str, str]] = field(default_factory=dict)
    _registered: dict[str, tuple[float, str]] = field(default_factory=dict)  # user id -> (at, event id)
    # Approvals by an actor whose registration this detector has not read yet (AUTH and PATCH are
    # read side by side): judged when it arrives. actor -> [(at, rollout id, event id)]
    _unjudged_approvals: dict[str, list[tuple[float, str, str]]] = field(default_factory=dict)
    _direct: dict[str, frozenset[str]] = field(default_factory=dict)  # direct channel -> its members
    _synthetic: set[str] = field(default_factory=set)  # the platform's probers' user ids
    # Behaviour findings about accounts whose registration was not read yet: user id -> findings.
    _unjudged_behaviour: dict[str, list[Anomaly]] = field(default_factory=dict)
    _seen: int = 0

    def __post_init__(self) -> None:
        s = self.settings
        self._spraying = DistinctBurst(s.spraying_accounts, s.spraying_window_s)
        self._erasures = DistinctBurst(s.erasure_count, s.erasure_window_s)
        self._joins = DistinctBurst(s.channels_joined, s.channels_joined_window_s)
        self._messaged = DistinctBurst(s.users_messaged, s.users_messaged_window_s)

    def _tick(self, at: float) -> None:
        """Every SWEEP_EVERY observations, forget what no rule can use any more (idle sessions,
        empty windows, stale fresh logins), so the state follows the active accounts, not the
        log's whole history. Which sources an account used is kept: that is the baseline."""
        self._seen += 1
        if self._seen % SWEEP_EVERY:
            return
        s = self.settings
        for session_id in [k for k, use in self._sessions.items() if at - use.at >= s.two_sources_window_s]:
            del self._sessions[session_id]
        for burst in (self._spraying, self._erasures, self._joins, self._messaged):
            burst.sweep(at)
        bucket = int(at // s.rate_bucket_s)
        for pair in [p for p, (counted, _) in self._in_channel.items() if counted < bucket]:
            del self._in_channel[pair]
        for actor in [a for a, pending in self._unjudged_approvals.items() if pending[-1][0] < at - 86400]:
            del self._unjudged_approvals[actor]  # not a registered account (the platform identity)
        for user_id in [u for u, held in self._unjudged_behaviour.items() if held[-1].at < at - 86400]:
            del self._unjudged_behaviour[user_id]  # a registration gone from AUTH (an erased account)
        for user_id in [
            u for u, fresh in self._fresh.items() if not fresh or at - fresh[-1][0] > s.new_source_window_s
        ]:
            del self._fresh[user_id]
        for user_id in [
            u for u, changes in self._unexplained.items() if not changes or at - changes[-1][0] > s.new_source_window_s
        ]:
            del self._unexplained[user_id]

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
        self._sessions[session_id] = _SessionUse(user_id, source, at, event_id)
        return found

    def session_refreshed(
        self, *, at: float, session_id: str, user_id: str, source: str, event_id: str
    ) -> Anomaly | None:
        last = self._sessions.get(session_id)
        self._sessions[session_id] = _SessionUse(user_id, source or (last.source if last else ""), at, event_id)
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

    # -- the behaviour rules: a person's use of their account (MSG) -----------------------------

    def message_posted(self, *, at: float, sender_id: str, event_id: str, channel_id: str = "") -> Anomaly | None:
        self._tick(at)
        if sender_id in self._synthetic:
            return None
        return self._behaviour(self._send_rate(at=at, sender_id=sender_id, event_id=event_id, channel_id=channel_id))

    def member_joined(self, *, at: float, user_id: str, channel_id: str, event_id: str) -> Anomaly | None:
        self._tick(at)
        if user_id in self._synthetic:
            return None
        return self._behaviour(self._channels_joined(at=at, user_id=user_id, channel_id=channel_id, event_id=event_id))

    def direct_message(self, *, at: float, sender_id: str, channel_id: str, event_id: str) -> Anomaly | None:
        """A message in a direct conversation counts once for each other member."""
        if sender_id in self._synthetic:
            return None
        return self._behaviour(
            self._users_messaged(at=at, sender_id=sender_id, channel_id=channel_id, event_id=event_id)
        )

    def _behaviour(self, found: Anomaly | None) -> Anomaly | None:
        """A behaviour rule's finding about an account, once its registration says it is a person's."""
        if found is not None and found.user_id not in self._registered:
            self._unjudged_behaviour.setdefault(found.user_id, []).append(found)
            return None
        return found

    # -- send rate against the account's own baseline (MSG MessagePosted) -----------------------

    def _send_rate(self, *, at: float, sender_id: str, event_id: str, channel_id: str) -> Anomaly | None:
        """Fires once per account and bucket, on the first of its two baselines exceeded: its own
        past buckets, or the channel's (a burst into a channel that usually hears little)."""
        s = self.settings
        bucket = int(at // s.rate_bucket_s)
        rate = self._rates.setdefault(sender_id, _Rate(bucket=bucket))
        if not rate.count_in(bucket, s):
            return None
        in_channel = 0
        if channel_id:
            channel = self._channel_rates.setdefault(channel_id, _Rate(bucket=bucket))
            if channel.count_in(bucket, s):
                counted, sent = self._in_channel.get((channel_id, sender_id), (bucket, 0))
                in_channel = (sent if counted == bucket else 0) + 1
                self._in_channel[(channel_id, sender_id)] = (bucket, in_channel)
        if rate.fired_bucket == bucket:
            return None
        own = rate.threshold(s, s.rate_floor)
        if rate.count > own:
            rate.fired_bucket = bucket
            return self._rate_anomaly(
                at=at,
                sender_id=sender_id,
                event_id=event_id,
                count=rate.count,
                baseline=rate,
                threshold=own,
                floor=s.rate_floor,
            )
        if in_channel:
            channel = self._channel_rates[channel_id]
            usual = channel.threshold(s, s.rate_channel_floor)
            if in_channel > usual:
                rate.fired_bucket = bucket
                return self._rate_anomaly(
                    at=at,
                    sender_id=sender_id,
                    event_id=event_id,
                    count=in_channel,
                    baseline=channel,
                    threshold=usual,
                    floor=s.rate_channel_floor,
                    channel_id=channel_id,
                )
        return None

    def _rate_anomaly(
        self,
        *,
        at: float,
        sender_id: str,
        event_id: str,
        count: int,
        baseline: _Rate,
        threshold: float,
        floor: int,
        channel_id: str = "",
    ) -> Anomaly:
        s = self.settings
        mean, stddev = baseline.mean, math.sqrt(baseline.var)
        evidence = {
            "baseline": "channel" if channel_id else "account",
            "messages_in_bucket": str(count),
            "bucket_s": f"{s.rate_bucket_s:g}",
            "baseline_mean": f"{mean:.2f}",
            "baseline_stddev": f"{stddev:.2f}",
            "buckets_learned": str(baseline.buckets_seen),
            "threshold": f"{threshold:.1f}",
        }
        usual = f"{mean:.1f} ± {stddev:.1f}"
        if channel_id:
            evidence["channel_id"] = channel_id
            observed = f"into channel {channel_id}, which usually hears {usual} from everyone"
        else:
            observed = f"against this account's usual {usual}"
        return Anomaly(
            kind=SEND_RATE,
            key=subject_token(sender_id),
            subject=f"user:{sender_id}",
            evidence=evidence,
            score=count / threshold,
            why=(
                f"{count} messages in {s.rate_bucket_s:g}s {observed} (threshold: mean + {s.rate_deviations:g} "
                f"deviations, at least {floor})"
            ),
            at=at,
            triggers=(event_id,),
            user_id=sender_id,
        )

    # -- many channels joined, many people messaged (MSG) --------------------------------------

    def _channels_joined(self, *, at: float, user_id: str, channel_id: str, event_id: str) -> Anomaly | None:
        s = self.settings
        burst = self._joins.add(user_id, at=at, item=channel_id, event_id=event_id)
        if burst is None:
            return None
        return Anomaly(
            kind=MANY_CHANNELS_JOINED,
            key=subject_token(user_id),
            subject=f"user:{user_id}",
            evidence={
                "channels": str(len(burst.items)),
                "window_s": f"{s.channels_joined_window_s:g}",
                "channel_ids": burst.listed(),
            },
            score=len(burst.items) / s.channels_joined,
            why=(
                f"joined {len(burst.items)} channels within {s.channels_joined_window_s:g}s "
                f"(threshold {s.channels_joined}): reading everything it can reach"
            ),
            at=at,
            triggers=burst.triggers,
            user_id=user_id,
        )

    def direct_channel_created(self, *, channel_id: str, members: frozenset[str]) -> None:
        self._direct[channel_id] = members

    def _users_messaged(self, *, at: float, sender_id: str, channel_id: str, event_id: str) -> Anomaly | None:
        members = self._direct.get(channel_id)
        if members is None:
            return None  # not a direct conversation
        s = self.settings
        burst = None
        for recipient in sorted(members - {sender_id}):
            burst = self._messaged.add(sender_id, at=at, item=recipient, event_id=event_id) or burst
        if burst is None:
            return None
        return Anomaly(
            kind=MANY_USERS_MESSAGED,
            key=subject_token(sender_id),
            subject=f"user:{sender_id}",
            evidence={
                "recipients": str(len(burst.items)),
                "messages": str(burst.events),
                "window_s": f"{s.users_messaged_window_s:g}",
                "recipient_ids": burst.listed(),
            },
            score=len(burst.items) / s.users_messaged,
            why=(
                f"sent direct messages to {len(burst.items)} different people within "
                f"{s.users_messaged_window_s:g}s (threshold {s.users_messaged}): a spam or phishing run"
            ),
            at=at,
            triggers=burst.triggers,
            user_id=sender_id,
        )

    # -- operator actions -------------------------------------------------------------------

    def user_erased(self, *, at: float, actor: str, user_id: str, event_id: str) -> Anomaly | None:
        self._tick(at)
        s = self.settings
        burst = self._erasures.add(actor, at=at, item=user_id, event_id=event_id)
        if burst is None:
            return None
        return Anomaly(
            kind=MASS_ERASURE,
            key=subject_token(actor),
            subject=f"actor:{actor}",
            evidence={
                "actor": actor,
                "erased_accounts": str(len(burst.items)),
                "window_s": f"{s.erasure_window_s:g}",
                "user_ids": ",".join(burst.items[:20]),
            },
            score=len(burst.items) / s.erasure_count,
            why=(
                f"{actor} erased {len(burst.items)} accounts within {s.erasure_window_s:g}s "
                f"(threshold {s.erasure_count})"
            ),
            at=at,
            triggers=burst.triggers,
        )

    def retention_set(self, *, at: float, actor: str, channel_id: str, days: int, event_id: str) -> Anomaly | None:
        limit = self.settings.short_retention_days
        if days == 0 or days > limit:
            return None
        return Anomaly(
            kind=SHORT_RETENTION,
            key=subject_token(channel_id),
            subject=f"actor:{actor}",
            evidence={"actor": actor, "channel_id": channel_id, "days": str(days), "threshold_days": str(limit)},
            score=(limit + 1) / days,
            why=(
                f"{actor} set channel {channel_id}'s retention to {days} day(s): its messages are destroyed "
                f"that soon (threshold {limit})"
            ),
            at=at,
            triggers=(event_id,),
        )

    def rollout_planned(self, *, at: float, rollout_id: str, actor: str, event_id: str) -> None:
        self._planned[rollout_id] = (at, actor, event_id)

    def account_registered(self, *, at: float, user_id: str, event_id: str, synthetic: bool = False) -> list[Anomaly]:
        """Remembers when the account was made and whether it is the platform's own (a prober);
        judges its approvals and its behaviour findings read before it."""
        self._registered[user_id] = (at, event_id)
        held = self._unjudged_behaviour.pop(user_id, [])
        if synthetic:
            self._synthetic.add(user_id)
            held = []
        pending = self._unjudged_approvals.pop(user_id, [])
        return held + [
            found
            for approved_at, rollout_id, approval_id in pending
            if (found := self._new_approver(at=approved_at, rollout_id=rollout_id, actor=user_id, event_id=approval_id))
        ]

    def rollout_approved(self, *, at: float, rollout_id: str, actor: str, event_id: str) -> list[Anomaly]:
        found = [self._rushed(at=at, rollout_id=rollout_id, actor=actor, event_id=event_id)]
        if actor in self._registered:
            found.append(self._new_approver(at=at, rollout_id=rollout_id, actor=actor, event_id=event_id))
        else:
            self._unjudged_approvals.setdefault(actor, []).append((at, rollout_id, event_id))
        return [a for a in found if a is not None]

    def _new_approver(self, *, at: float, rollout_id: str, actor: str, event_id: str) -> Anomaly | None:
        registered_at, registered_id = self._registered[actor]
        limit = self.settings.new_approver_age_s
        soon = too_soon(registered_at, at, limit)
        if soon is None:
            return None
        age = soon.elapsed
        return Anomaly(
            kind=NEW_ACCOUNT_APPROVAL,
            key=subject_token(rollout_id),
            subject=f"actor:{actor}",
            evidence={
                "rollout_id": rollout_id,
                "approved_by": actor,
                "account_age_s": f"{age:.0f}",
                "min_account_age_s": f"{limit:g}",
            },
            score=soon.score,
            why=(
                f"roll-out {rollout_id} was approved by {actor}, an account made {age:.0f}s before "
                f"(an approver's account is at least {limit:g}s old)"
            ),
            at=at,
            triggers=(registered_id, event_id),
            user_id=actor,
        )

    def _rushed(self, *, at: float, rollout_id: str, actor: str, event_id: str) -> Anomaly | None:
        planned = self._planned.pop(rollout_id, None)
        if planned is None:
            return None
        planned_at, planner, planned_id = planned
        limit = self.settings.rollout_min_review_s
        soon = too_soon(planned_at, at, limit)
        if soon is None:
            return None
        elapsed = soon.elapsed
        return Anomaly(
            kind=RUSHED_ROLLOUT,
            key=subject_token(rollout_id),
            subject=f"actor:{actor}",
            evidence={
                "rollout_id": rollout_id,
                "planned_by": planner,
                "approved_by": actor,
                "seconds_to_approval": f"{elapsed:.1f}",
                "min_review_s": f"{limit:g}",
            },
            score=soon.score,
            why=(
                f"roll-out {rollout_id} planned by {planner} was approved by {actor} {elapsed:.0f}s later "
                f"(a review takes at least {limit:g}s)"
            ),
            at=at,
            triggers=(planned_id, event_id),
        )
