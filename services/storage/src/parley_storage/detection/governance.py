"""The rules about operators' actions: mass erasure, short retention, rushed roll-outs and
roll-outs approved by new accounts (AUTH, MSG, PATCH)."""

from __future__ import annotations

from parley_storage.detection.bursts import ERASURES
from parley_storage.detection.pairs import NEW_APPROVER, RUSHED
from parley_storage.detection.state import RuleState
from parley_storage.detection.vocabulary import Anomaly, AnomalyKind, subject_token


class GovernanceRules(RuleState):
    # -- operator actions -------------------------------------------------------------------

    def user_erased(self, *, at: float, actor: str, user_id: str, event_id: str) -> Anomaly | None:
        self._tick(at)
        return self._burst(ERASURES, actor, at=at, items=(user_id,), event_id=event_id)

    def retention_set(self, *, at: float, actor: str, channel_id: str, days: int, event_id: str) -> Anomaly | None:
        limit = self.settings.short_retention_days
        if days == 0 or days > limit:
            return None
        return Anomaly(
            kind=AnomalyKind.SHORT_RETENTION,
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
        return NEW_APPROVER.finding(
            self.settings,
            first=self._registered[actor],
            at=at,
            event_id=event_id,
            key=rollout_id,
            subject=f"actor:{actor}",
            facts={"rollout_id": rollout_id, "approved_by": actor},
            user_id=actor,
        )

    def _rushed(self, *, at: float, rollout_id: str, actor: str, event_id: str) -> Anomaly | None:
        planned = self._planned.pop(rollout_id, None)
        if planned is None:
            return None
        planned_at, planner, planned_id = planned
        return RUSHED.finding(
            self.settings,
            first=(planned_at, planned_id),
            at=at,
            event_id=event_id,
            key=rollout_id,
            subject=f"actor:{actor}",
            facts={"rollout_id": rollout_id, "planned_by": planner, "approved_by": actor},
        )
