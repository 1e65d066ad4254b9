"""The registry's read model, rebuilt from the PATCH stream: advisories, findings, roll-outs, and
where each aggregate stands in the stream (what a command appends after). No I/O: the replay
hands each event in (registry_base.py)."""

from __future__ import annotations

import json
import time

from parley.patch.v1 import events_pb2

from parley_core.bus import ReceivedEvent
from parley_core.envelope import open_payload
from parley_core.event_log import Position
from parley_core.projection_dispatch import subject_matches
from parley_core.topology import ROLLOUTS_FILTER
from parley_patch_registry import codec
from parley_patch_registry.advisories import Advisory, parse_advisory
from parley_patch_registry.findings import DeadlinePolicy, FindingBook, FindingEvent
from parley_patch_registry.rollout import Rollout


def alert_key(advisory_id: str, service: str, package: str, deadline: float) -> tuple[str, str, str, int]:
    """What makes an overdue alert the same one: the finding and its deadline (to the millisecond,
    so a deadline read back from the stream matches the one computed)."""
    return (advisory_id, service, package, round(deadline * 1000))


class RegistryProjection:
    def __init__(self, deadline_policy: DeadlinePolicy) -> None:
        self.advisories: dict[str, Advisory] = {}
        self.advisory_modified: dict[str, str] = {}
        self.findings = FindingBook(deadline_policy)
        self.rollouts: dict[str, Rollout] = {}
        self.release_publishers: dict[str, str] = {}
        self.release_hashes: dict[str, str] = {}  # target path -> the sha256 its ReleasePublished recorded
        # The overdue alerts on the stream: (advisory, service, package, deadline in ms).
        self.announced_overdue: set[tuple[str, str, str, int]] = set()
        self._rollout_seq: dict[str, int] = {}  # a roll-out's id -> its last event's stream seq
        self._rollouts_seq = 0  # the newest event of any roll-out: what a new roll-out goes after
        self._finding_seq: dict[str, int] = {}  # a finding's subject -> its last event's stream seq
        self._finding_version: dict[str, int] = {}  # ... and how many events it holds
        self.step_started_at: dict[tuple[str, int], float] = {}
        self.phase_since: dict[tuple[str, int], float] = {}  # when a step's current phase began

    def rollout_position(self, rollout_id: str) -> Position:
        """An existing roll-out goes after its own last event; a new one after every roll-out's
        (one unfinished per service): a plan another registry recorded meanwhile is read first."""
        rollout = self.rollouts.get(rollout_id)
        if rollout is None:
            return Position(0, self._rollouts_seq, of=ROLLOUTS_FILTER)
        return Position(len(rollout.history), self._rollout_seq.get(rollout_id, 0))

    def finding_position(self, subject: str) -> Position:
        return Position(self._finding_version.get(subject, 0), self._finding_seq.get(subject, 0))

    def apply(self, event: ReceivedEvent) -> None:
        if subject_matches(ROLLOUTS_FILTER, event.subject):
            self._rollouts_seq = event.stream_seq
        payload = open_payload(event.envelope)
        if isinstance(payload, events_pb2.AdvisoryImported):
            self.advisories[payload.advisory_id] = parse_advisory(json.loads(payload.osv_json))
            self.advisory_modified[payload.advisory_id] = payload.modified
            return
        if isinstance(payload, events_pb2.ReleasePublished):
            self.release_publishers[payload.target_path] = payload.published_by
            self.release_hashes.setdefault(payload.target_path, payload.sha256)  # the bytes first published
            return
        if isinstance(payload, events_pb2.VulnerabilityOverdue):
            self.announced_overdue.add(
                alert_key(payload.advisory_id, payload.service, payload.package, payload.deadline)
            )
            return
        domain_event = codec.from_proto(payload)
        if domain_event is None:
            return
        if isinstance(domain_event, FindingEvent):
            self.findings.apply(domain_event, self.advisories.get(domain_event.advisory_id))
            self._finding_seq[event.subject] = event.stream_seq
            self._finding_version[event.subject] = self._finding_version.get(event.subject, 0) + 1
            return
        rollout = self.rollouts.setdefault(domain_event.rollout_id, Rollout())
        rollout.apply(domain_event)
        self._rollout_seq[domain_event.rollout_id] = event.stream_seq
        # When a step's instance started and its current phase began (this process's clock).
        if isinstance(payload, events_pb2.InstanceStarted):
            self.step_started_at[(payload.rollout_id, payload.step)] = time.monotonic()
        if isinstance(payload, events_pb2.GateEvaluated) and payload.passed and payload.weight < 100:
            # A larger share: a new phase with its own analysis window and its own time.
            self.step_started_at[(payload.rollout_id, payload.step)] = time.monotonic()
            self.phase_since[(payload.rollout_id, payload.step)] = time.monotonic()
