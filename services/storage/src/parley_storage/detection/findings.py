"""What storage records for a rule's finding: the finding itself with the response chosen, and
the fact asking auth to carry that response out (revoke or step up the session, slow the source
down). Pure: the detector (detector.py) appends what is decided here, codec.py writes it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from parley_storage.detection.vocabulary import Anomaly, Response

# A response is asked for only on a finding this recent (by the events' own clocks): the session
# an older one names is long gone or was judged already.
RESPONSE_MAX_AGE_S = 900.0
MAX_REASON = 500
# The responses auth carries out on a session, by the verb naming what storage asks for.
SESSION_VERBS: dict[Response, Literal["revoke", "stepup"]] = {"revoke_session": "revoke", "step_up": "stepup"}


@dataclass(frozen=True)
class AnomalyRecorded:
    anomaly: Anomaly
    response: Response


@dataclass(frozen=True)
class SessionActionDue:
    """Auth is asked to revoke (`revoke`) or step up (`stepup`) the session the finding names."""

    verb: Literal["revoke", "stepup"]
    anomaly: Anomaly
    reason: str


@dataclass(frozen=True)
class SourceSlowdownDue:
    anomaly: Anomaly
    until_unix: float
    reason: str


Finding = AnomalyRecorded | SessionActionDue | SourceSlowdownDue


def decide_finding(
    anomaly: Anomaly, *, configured: Response, now: float, slow_source_s: float
) -> tuple[list[Finding], AnomalyRecorded]:
    """The finding with its response (`configured` for its rule, else a plain alert when the
    finding names no session or source to act on, or is too old), then what auth must do; and
    the finding as recorded."""
    response = configured
    named = anomaly.session_id if response in SESSION_VERBS else anomaly.source
    if not named or now - anomaly.at > RESPONSE_MAX_AGE_S:
        response = "alert"
    recorded = AnomalyRecorded(anomaly, response)
    found: list[Finding] = [recorded]
    reason = f"anomaly {anomaly.kind}: {anomaly.why}"[:MAX_REASON]
    if response in SESSION_VERBS:
        found.append(SessionActionDue(SESSION_VERBS[response], anomaly, reason))
    elif response == "slow_source":
        found.append(SourceSlowdownDue(anomaly, anomaly.at + slow_source_s, reason))
    return found, recorded
