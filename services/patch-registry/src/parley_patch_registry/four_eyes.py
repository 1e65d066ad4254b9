"""The four-eyes rule of a roll-out: whoever approves it is neither who planned it nor who
published the release it installs. `approve` refuses such a command; replay ignores such an
approval, since whoever holds patch-registry's NATS credential could append one straight to PATCH."""

from __future__ import annotations

import logging

from parley_core.actor import Actor
from parley_core.errors import PermissionDenied

log = logging.getLogger(__name__)


def require_other_approver(actor: str, *, planned_by: str, release_published_by: str) -> None:
    if actor in (planned_by, release_published_by):
        raise PermissionDenied(
            "the roll-out must be approved by someone other than who planned it or published the release"
        )


def approval_counts(approver: str, *, rollout_id: str, state: str, planned_by: str, release_published_by: str) -> bool:
    """Whether a replayed approval approves: a person's, of a planned roll-out, by a third person.
    One that does not is logged as a security event (and kept in the history, which numbers the
    aggregate's events)."""
    person = _person(approver)
    if state == "planned" and person and person not in {_person(planned_by), _person(release_published_by)}:
        return True
    log.error(
        "security: ignored a roll-out approval that breaks the four-eyes rule",
        extra={
            "security_event": "forged_rollout_approval_ignored",
            "rollout_id": rollout_id,
            "approver": approver,
            "planned_by": planned_by,
            "release_published_by": release_published_by,
            "state": state,
        },
    )
    return False


def _person(actor: str) -> str:
    """The account id an event's actor names, in whichever form it was written (ids are hex, so
    case does not tell two people apart); "" for anyone who is not a person."""
    return Actor.parse(actor).user_id.lower()
