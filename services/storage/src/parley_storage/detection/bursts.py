"""The burst rules as data: each counts one key (a source, an operator, an account) touching
`threshold` distinct things within a window (shapes.DistinctBurst), and one function turns the
burst that fired into the Anomaly explaining it. A new burst rule is a row here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from parley_storage.detection.shapes import Burst, DistinctBurst
from parley_storage.detection.vocabulary import Anomaly, AnomalyKind, DetectionSettings, subject_token


@dataclass(frozen=True)
class BurstRule:
    kind: AnomalyKind
    concerns: Literal["source", "actor", "user"]  # what the key is: the anomaly's subject
    threshold: str  # the DetectionSettings field: how many distinct things fire it ...
    window: str  # ... and the one saying within how many seconds
    counted: str  # evidence: how many distinct things
    listed: str  # evidence: their ids
    # str.format'ted with key, things (distinct), events (repeats included), window, threshold
    why: str
    events: str = ""  # evidence, when named: every event in the window, repeats included
    names_key: bool = False  # the evidence names the key too (under `concerns`)
    listed_as_seen: bool = False  # the first ids in the order seen, rather than sorted

    def counter(self, settings: DetectionSettings) -> DistinctBurst:
        return DistinctBurst(getattr(settings, self.threshold), getattr(settings, self.window))

    def finding(self, key: str, burst: Burst, counter: DistinctBurst, *, at: float) -> Anomaly:
        things = len(burst.items)
        evidence: dict[str, str] = {self.concerns: key} if self.names_key else {}
        evidence[self.counted] = str(things)
        if self.events:
            evidence[self.events] = str(burst.events)
        evidence["window_s"] = f"{counter.window_s:g}"
        evidence[self.listed] = ",".join(burst.items[:20]) if self.listed_as_seen else burst.listed()
        return Anomaly(
            kind=self.kind,
            key=subject_token(key),
            subject=f"{self.concerns}:{key}",
            evidence=evidence,
            score=things / counter.threshold,
            why=self.why.format(
                key=key, things=things, events=burst.events, window=counter.window_s, threshold=counter.threshold
            ),
            at=at,
            triggers=burst.triggers,
            user_id=key if self.concerns == "user" else "",
            source=key if self.concerns == "source" else "",
        )


# Failed logins (SEC) for many accounts from one address.
SPRAYING = BurstRule(
    kind=AnomalyKind.PASSWORD_SPRAYING,
    concerns="source",
    threshold="spraying_accounts",
    window="spraying_window_s",
    counted="accounts",
    listed="usernames",
    why="{events} failed logins for {things} different accounts from {key} within {window:g}s "
    "(threshold {threshold} accounts)",
    events="failures",
    names_key=True,
)
# Accounts erased (AUTH) by one operator.
ERASURES = BurstRule(
    kind=AnomalyKind.MASS_ERASURE,
    concerns="actor",
    threshold="erasure_count",
    window="erasure_window_s",
    counted="erased_accounts",
    listed="user_ids",
    why="{key} erased {things} accounts within {window:g}s (threshold {threshold})",
    names_key=True,
    listed_as_seen=True,
)
# Channels joined (MSG) by one account.
JOINS = BurstRule(
    kind=AnomalyKind.MANY_CHANNELS_JOINED,
    concerns="user",
    threshold="channels_joined",
    window="channels_joined_window_s",
    counted="channels",
    listed="channel_ids",
    why="joined {things} channels within {window:g}s (threshold {threshold}): reading everything it can reach",
)
# People sent direct messages (MSG) by one account.
MESSAGED = BurstRule(
    kind=AnomalyKind.MANY_USERS_MESSAGED,
    concerns="user",
    threshold="users_messaged",
    window="users_messaged_window_s",
    counted="recipients",
    listed="recipient_ids",
    why="sent direct messages to {things} different people within {window:g}s (threshold {threshold}): "
    "a spam or phishing run",
    events="messages",
)
BURST_RULES = (SPRAYING, ERASURES, JOINS, MESSAGED)
