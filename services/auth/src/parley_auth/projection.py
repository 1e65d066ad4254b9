"""Auth's state, rebuilt from the AUTH stream: accounts, sessions, lockouts, MFA, invites, device
keys, signing and audit keys, erasures. No I/O: every event type has one applier in one table
(`APPLIERS`, from the apply_* modules); sealed fields are opened with the in-memory sealing key,
and nothing here reads a file (adopting a successor signing key is the key-maintenance job's,
signing_key_job.py). What it holds is auth_state.py.
"""

from __future__ import annotations

import logging

from google.protobuf.message import Message

from parley_auth import apply_accounts, apply_keys, apply_sessions
from parley_auth.applying import Appliers, Recorded
from parley_auth.auth_state import AuthState
from parley_core.bus import ReceivedEvent
from parley_core.envelope import open_payload

log = logging.getLogger(__name__)

# Every event type auth keeps something of, with its one applier.
APPLIERS: Appliers = {}
for _table in (apply_accounts.APPLIERS, apply_sessions.APPLIERS, apply_keys.APPLIERS):
    assert not APPLIERS.keys() & _table.keys(), "two appliers of one event type"
    APPLIERS.update(_table)


class AuthProjection(AuthState):
    """Everything auth decides from, with the one way an event changes it. Attributes are mutated
    in place, never rebound, so a holder of one (the servicer, storage_due.py) sees every change."""

    def apply_received(self, event: ReceivedEvent) -> Message:
        """The event from the stream, applied; returns its payload."""
        payload = open_payload(event.envelope)
        self.apply(payload, Recorded.of(event))
        return payload

    def apply(self, payload: Message, at: Recorded) -> None:
        self.subject_versions.see(at.subject, at.aggregate_version, str(getattr(payload, "user_id", "")))
        applier = APPLIERS.get(type(payload))
        if applier is not None:  # an event type auth keeps nothing of
            applier(self, payload, at)
