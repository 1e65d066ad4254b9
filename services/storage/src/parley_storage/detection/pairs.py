"""The pair rules as data: each fires on a second event less than a limit after a first
(shapes.too_soon), and one function turns the pair into the Anomaly explaining it. A new pair
rule is a row here; its caller says what the two events were (the facts)."""

from __future__ import annotations

from dataclasses import dataclass

from parley_storage.detection.shapes import too_soon
from parley_storage.detection.vocabulary import Anomaly, AnomalyKind, DetectionSettings, subject_token


@dataclass(frozen=True)
class PairRule:
    kind: AnomalyKind
    limit: str  # the DetectionSettings field: the seconds under which the second event is too soon
    elapsed: str  # evidence: the seconds between the two events ...
    limit_named: str  # ... and the limit
    why: str  # str.format'ted with the facts, elapsed and limit
    elapsed_format: str = ".1f"

    def finding(
        self,
        settings: DetectionSettings,
        *,
        first: tuple[float, str],
        at: float,
        event_id: str,
        key: str,
        subject: str,
        facts: dict[str, str],
        **names: str,
    ) -> Anomaly | None:
        """The anomaly if the event (`at`, `event_id`) came too soon after `first` (its time and
        event id); `key` names it, `names` are the Anomaly's user, session or source."""
        first_at, first_id = first
        limit = getattr(settings, self.limit)
        soon = too_soon(first_at, at, limit)
        if soon is None:
            return None
        return Anomaly(
            kind=self.kind,
            key=subject_token(key),
            subject=subject,
            evidence={**facts, self.elapsed: format(soon.elapsed, self.elapsed_format), self.limit_named: f"{limit:g}"},
            score=soon.score,
            why=self.why.format(**facts, elapsed=soon.elapsed, limit=limit),
            at=at,
            triggers=(first_id, event_id),
            **names,
        )


# One session used (AUTH) from two sources, sooner than a move to another network would take.
TWO_SOURCES = PairRule(
    kind=AnomalyKind.SESSION_TWO_SOURCES,
    limit="two_sources_window_s",
    elapsed="seconds_apart",
    limit_named="window_s",
    why="session {session_id} was used from {first_source} and from {second_source} {elapsed:.0f}s apart "
    "(under {limit:g}s: one session in two places)",
)
# A sensitive change soon after a login from a source the account never used.
NEW_SOURCE_CHANGE = PairRule(
    kind=AnomalyKind.NEW_SOURCE_SENSITIVE_CHANGE,
    limit="new_source_window_s",
    elapsed="seconds_after_login",
    limit_named="window_s",
    why="{change} {elapsed:.0f}s after a login from {new_source}, a source this account had never used "
    "(window {limit:g}s)",
)
# A roll-out approved (PATCH) by an account registered (AUTH) shortly before.
NEW_APPROVER = PairRule(
    kind=AnomalyKind.NEW_ACCOUNT_APPROVAL,
    limit="new_approver_age_s",
    elapsed="account_age_s",
    limit_named="min_account_age_s",
    why="roll-out {rollout_id} was approved by {approved_by}, an account made {elapsed:.0f}s before "
    "(an approver's account is at least {limit:g}s old)",
    elapsed_format=".0f",
)
# A roll-out approved sooner after its planning than a review takes.
RUSHED = PairRule(
    kind=AnomalyKind.RUSHED_ROLLOUT,
    limit="rollout_min_review_s",
    elapsed="seconds_to_approval",
    limit_named="min_review_s",
    why="roll-out {rollout_id} planned by {planned_by} was approved by {approved_by} {elapsed:.0f}s later "
    "(a review takes at least {limit:g}s)",
)
