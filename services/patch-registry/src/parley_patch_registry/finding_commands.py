"""The registry's advisories and findings: OSV advisories imported, the fleet matched against
them (what that detects or fixes is recorded per finding), and one alert per overdue finding."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import UTC, datetime

from parley.patch.v1 import events_pb2

from parley_core.envelope import NewEvent
from parley_core.errors import InvalidArgument
from parley_core.event_log import ANYWHERE, ChangedMeanwhile
from parley_core.same_named import same_named
from parley_core.tokens import Caller
from parley_core.topology import advisory_subject, finding_subject, vulnerability_alert_subject
from parley_patch_registry import codec
from parley_patch_registry.advisories import Advisory, parse_advisory
from parley_patch_registry.findings import AFFECTED_FIELDS, Finding, FindingEvent, InstalledPackage
from parley_patch_registry.patch_roles import require_patch_role
from parley_patch_registry.projection import alert_key
from parley_patch_registry.registry_base import REGISTRY_ACTOR, RegistryBase, actor_of

log = logging.getLogger(__name__)


class FindingCommands(RegistryBase):
    async def import_advisories(self, caller: Caller, records: list[str]) -> tuple[int, int, int]:
        require_patch_role(caller.role, "importing advisories")
        parsed: list[tuple[Advisory, str]] = []
        for text in records:
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as error:
                raise InvalidArgument(f"an advisory is not JSON: {error}") from None
            parsed.append((parse_advisory(raw), json.dumps(raw, sort_keys=True)))  # all valid, or none written
        imported = unchanged = withdrawn = 0
        async with self._lock:
            for advisory, text in parsed:
                if (
                    self.state.advisory_modified.get(advisory.id) == advisory.modified
                    and advisory.id in self.advisories
                ):
                    unchanged += 1
                    continue
                event = events_pb2.AdvisoryImported(advisory_id=advisory.id, modified=advisory.modified, osv_json=text)
                await self._append(
                    advisory_subject(advisory.id), "advisory", advisory.id, event, actor_of(caller), at=ANYWHERE
                )
                imported += 1
                withdrawn += int(advisory.is_withdrawn)
        return imported, unchanged, withdrawn

    def installed(self, now: float) -> list[InstalledPackage]:
        return [
            InstalledPackage(beat.service, beat.instance_id, beat.host, dist.name, dist.version)
            for beat in self.fleet.live(now)
            for dist in beat.distributions
        ]

    async def reconcile_findings(self) -> list[Finding]:
        """Matches the fleet against the advisories, and records what that detects or fixes."""
        async with self._lock:
            now = time.monotonic()
            changes = self.findings.observe(
                self.advisories.values(),
                self.installed(now),
                datetime.now(UTC),
                fleet_complete=self.fleet.complete(now),
            )
            for change in changes:
                await self._record_finding(change)
        return self.findings.findings()

    async def _record_finding(self, change: FindingEvent) -> None:
        """Appends one detection or fix after the finding's last event. Another registry that
        recorded one first wins: its event is replayed here, and the next look decides again."""
        subject = finding_subject(change.advisory_id, change.service, change.package)
        at = self.state.finding_position(subject)
        # The same id for the same step of the same finding: two registries' appends are one.
        event_id = hashlib.sha256(f"{subject}|{type(change).__name__}|{at.last_seq}".encode()).hexdigest()[:32]
        event = NewEvent(
            aggregate_type="finding",
            aggregate_id="/".join(change.exposure),
            payload=codec.to_proto(change),
            actor=REGISTRY_ACTOR,
            event_id=event_id,
        )
        try:
            await self.events.append(subject, [event], at)
        except ChangedMeanwhile:
            await self.events.settle(subject)
            return
        log.info("%s: %s in %s (%s)", type(change).__name__, change.advisory_id, change.service, change.package)

    async def announce_overdue(self) -> int:
        """One alert per overdue finding (a service exposed in a package past its deadline,
        naming one of its affected instances), on the registry's own PATCH stream
        (parley.patch.alert.overdue.<advisory id>), never in auth's audit chain: the replay knows
        the alerts already there, so neither a restart nor new instances raise one twice."""
        announced = 0
        for finding in self.findings.overdue(datetime.now(UTC)):
            key = alert_key(finding.advisory_id, finding.service, finding.package, finding.deadline.timestamp())
            if key in self.state.announced_overdue:
                continue
            event_id = hashlib.sha256(repr(key).encode()).hexdigest()[:32]
            payload = events_pb2.VulnerabilityOverdue(
                **same_named(finding, *AFFECTED_FIELDS),
                priority=finding.score.priority,
                deadline=finding.deadline.timestamp(),
            )
            alert = NewEvent(
                aggregate_type="vulnerability",
                aggregate_id=finding.advisory_id,
                payload=payload,
                actor=REGISTRY_ACTOR,
                event_id=event_id,
            )
            await self.events.append(vulnerability_alert_subject("overdue", finding.advisory_id), [alert], ANYWHERE)
            announced += 1
        return announced
