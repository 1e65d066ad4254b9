"""The rules about operators' actions: mass erasure, short retention, rushed roll-outs and
roll-outs approved by new accounts (AUTH, MSG, PATCH)."""

from __future__ import annotations

from parley_storage.detection.shapes import too_soon
from parley_storage.detection.state import RuleState
from parley_storage.detection.vocabulary import (
    MASS_ERASURE,
    NEW_ACCOUNT_APPROVAL,
    RUSHED_ROLLOUT,
    SHORT_RETENTION,
    Anomaly,
    subject_token,
)


class GovernanceRules(RuleState):
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
