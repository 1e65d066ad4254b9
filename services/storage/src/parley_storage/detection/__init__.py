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

The rules live in one module per concern (access, behaviour, governance) over one shared state
(state.py); the burst rules and the pair rules are rows of a table each (bursts.py, pairs.py).
`Rules` puts them together. The names, thresholds and Anomaly are vocabulary.py's.
"""

from __future__ import annotations

from parley_storage.detection.access import AccessRules
from parley_storage.detection.behaviour import BehaviourRules
from parley_storage.detection.governance import GovernanceRules
from parley_storage.detection.vocabulary import (
    DEFAULT_RESPONSES,
    KINDS,
    SESSION_KINDS,
    SOURCE_KINDS,
    Anomaly,
    AnomalyKind,
    DetectionSettings,
    Response,
    subject_token,
)

__all__ = [
    "DEFAULT_RESPONSES",
    "KINDS",
    "SESSION_KINDS",
    "SOURCE_KINDS",
    "Anomaly",
    "AnomalyKind",
    "DetectionSettings",
    "Response",
    "Rules",
    "subject_token",
]


class Rules(AccessRules, BehaviourRules, GovernanceRules):
    """Every rule, fed one event at a time by the detector, in each stream's order."""
