"""The registry's application layer: releases, advisories, findings and roll-outs over the bus.

State is rebuilt from the PATCH stream at start (advisories, findings and roll-outs) and from
the TUF repository on disk (releases). A command runs the domain on a copy, appends the events, and the
replay applies them: what is in memory is always what is in the stream. A second registry
instance may run on a joined host too (docs/deploy.md): both follow the stream, decide on what they
replayed and append with the subject's expected sequence, so a decision the other made first is
read and decided again (`_decide`); both write one TUF repository in a folder the hosts share,
one change at a time (ReleaseRepository.exclusive).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from google.protobuf.message import Message
from parley.fleet.v1 import fleet_pb2
from parley.patch.v1 import events_pb2

from parley_core.actor import Actor
from parley_core.bus import ConcurrencyConflict, EventBus, ReceivedEvent, Replay
from parley_core.envelope import NewEvent, open_payload
from parley_core.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from parley_core.files import ensure_private_dir
from parley_core.request_stats import LATENCY_BUCKETS_MS, bucket_percentile
from parley_core.tokens import Caller
from parley_core.topology import (
    PATCH_FILTER,
    SERVICES,
    advisory_subject,
    finding_subject,
    release_subject,
    rollout_subject,
    trust_root_subject,
    vulnerability_alert_subject,
)
from parley_patch_registry import codec
from parley_patch_registry.advisories import Advisory, parse_advisory
from parley_patch_registry.findings import Finding, FindingBook, FindingEvent, InstalledPackage
from parley_patch_registry.releases import (
    KeyStore,
    Lifetimes,
    ReleaseInfo,
    ReleaseRepository,
    delegated_role,
    parse_public_key,
)
from parley_patch_registry.rollout import (
    DEFAULT_WEIGHTS,
    CallFigures,
    InstanceWindow,
    Rollout,
    RolloutEvent,
    describe,
    require_patch_role,
)
from parley_patch_registry.schemas import SchemaCensus, check_readable
from parley_patch_registry.settings import RegistrySettings

log = logging.getLogger(__name__)
# Heartbeats kept per instance: at the default one every 5 s, the last hour (the console's Health
# page); at one a second, twelve minutes, longer than any gate window.
HEARTBEAT_HISTORY = 720
STOPPED = "STOPPED"
# Who published a base release: the platform, not a person (so any operator may approve its roll-out).
BASE_PUBLISHER = "platform (base version)"
# What of a crashed instance's log the audit keeps: its last lines, each cut to a length.
LOG_LINES_KEPT = 20
LOG_LINE_LIMIT = 500
# How often a roll-out's decision is made again after another registry instance appended first.
CONFLICT_ATTEMPTS = 5
DRIVEN = ("approved", "canary", "production")  # the states the registry moves on by itself

# The envelope actor of what the registry records on its own (overdue alerts, automatic roll-out
# steps): "service:<name>" as every service writes it, so `parley audit query --actor
# service:patch-registry` finds them.
REGISTRY_ACTOR = Actor.service("patch-registry")


class FleetView:
    """Every instance's heartbeats of the last while (newest last), with when each arrived."""

    def __init__(self, stale_after_s: float, history: int = HEARTBEAT_HISTORY) -> None:
        self.stale_after_s = stale_after_s
        self._history_len = history
        self.heard_since: float | None = None  # when the registry began to follow heartbeats (monotonic)
        self._beats: dict[str, deque[tuple[fleet_pb2.InstanceHeartbeat, float]]] = {}
        self._first: dict[str, tuple[fleet_pb2.InstanceHeartbeat, float]] = {}

    @property
    def _latest(self) -> dict[str, tuple[fleet_pb2.InstanceHeartbeat, float]]:
        return {instance_id: beats[-1] for instance_id, beats in self._beats.items()}

    def record(self, beat: fleet_pb2.InstanceHeartbeat, received_at: float) -> None:
        """A STOPPED beat is an instance's last word when it stopped on purpose (a drain, a
        platform stop): it leaves the view. One that falls silent stays, and shows as stale."""
        if beat.health == STOPPED:
            self._beats.pop(beat.instance_id, None)
            self._first.pop(beat.instance_id, None)
            return
        self._first.setdefault(beat.instance_id, (beat, received_at))
        self._beats.setdefault(beat.instance_id, deque(maxlen=self._history_len)).append((beat, received_at))

    def complete(self, now: float) -> bool:
        """Every live instance has been heard: the view has followed heartbeats as long as an
        instance stays live without one."""
        return self.heard_since is not None and now - self.heard_since >= self.stale_after_s

    def is_live(self, instance_id: str, now: float) -> bool:
        entry = self.latest(instance_id)
        return entry is not None and now - entry[1] <= self.stale_after_s and entry[0].health == "SERVING"

    def latest(self, instance_id: str) -> tuple[fleet_pb2.InstanceHeartbeat, float] | None:
        beats = self._beats.get(instance_id)
        return beats[-1] if beats else None

    def first(self, instance_id: str) -> tuple[fleet_pb2.InstanceHeartbeat, float] | None:
        return self._first.get(instance_id)

    def history(self, instance_id: str) -> list[tuple[fleet_pb2.InstanceHeartbeat, float]]:
        """The instance's kept heartbeats with when each arrived, oldest first."""
        return list(self._beats.get(instance_id, ()))

    def figures(self, instance_ids: Iterable[str], since: float | None) -> CallFigures:
        """The calls these instances served since `since` (None: since they started), summed.

        Each instance's counters are cumulative, so the window is its newest heartbeat minus the
        last one received at or before `since` (zero when it started later). Latencies come from
        the difference of the latency histograms; an instance of a version without them counts
        its heartbeats' own p99s, the worst of them.
        """
        spans: list[tuple[fleet_pb2.InstanceHeartbeat | None, fleet_pb2.InstanceHeartbeat, list[Beat]]] = []
        for instance_id in instance_ids:
            beats = self._beats.get(instance_id)
            if not beats:
                continue
            base: fleet_pb2.InstanceHeartbeat | None = None
            if since is not None:
                base = next((beat for beat, seen in reversed(beats) if seen <= since), None)
            window = [beat for beat, seen in beats if since is None or seen > since]
            spans.append((base, beats[-1][0], window))
        return _summed(spans)

    def window(self, instance_ids: Iterable[str], start: float, end: float) -> CallFigures:
        """The calls these instances served between `start` and `end` (monotonic seconds), as
        the heartbeats around both tell. An instance whose kept history begins after `start`
        while it ran before (older heartbeats dropped) is left out: its count there is unknown."""
        spans: list[tuple[fleet_pb2.InstanceHeartbeat | None, fleet_pb2.InstanceHeartbeat, list[Beat]]] = []
        for instance_id in instance_ids:
            beats = self._beats.get(instance_id)
            first = self._first.get(instance_id)
            if not beats or first is None:
                continue
            latest = next((beat for beat, seen in reversed(beats) if seen <= end), None)
            if latest is None:
                continue  # not started yet then
            base = next((beat for beat, seen in reversed(beats) if seen <= start), None)
            if base is None and first[1] <= start:
                continue  # its heartbeats from then are no longer kept
            window = [beat for beat, seen in beats if start < seen <= end]
            spans.append((base, latest, window))
        return _summed(spans)

    def services(self) -> dict[str, list[str]]:
        """Every service in the view, with its instances."""
        found: dict[str, list[str]] = {}
        for instance_id, (beat, _) in sorted(self._latest.items()):
            found.setdefault(beat.service, []).append(instance_id)
        return found

    def instances(self, now: float) -> list[fleet_pb2.InstanceStatus]:
        return [
            fleet_pb2.InstanceStatus(last_heartbeat=beat, stale=now - seen > self.stale_after_s)
            for beat, seen in sorted(self._latest.values(), key=lambda x: (x[0].service, x[0].instance_id))
        ]

    def live(self, now: float, service: str | None = None) -> list[fleet_pb2.InstanceHeartbeat]:
        return [
            beat
            for beat, seen in self._latest.values()
            if now - seen <= self.stale_after_s
            and beat.health == "SERVING"
            and (service is None or beat.service == service)
        ]


Beat = fleet_pb2.InstanceHeartbeat


def _summed(
    spans: Iterable[tuple[fleet_pb2.InstanceHeartbeat | None, fleet_pb2.InstanceHeartbeat, list[Beat]]],
) -> CallFigures:
    """Calls, errors and latency percentiles over (base, latest, beats between) of each instance:
    the difference of the cumulative counters and latency histograms."""
    calls = errors = 0
    buckets = [0] * (len(LATENCY_BUCKETS_MS) + 1)
    unbucketed_p99 = 0.0
    for base, latest, window in spans:
        calls += latest.requests_total - (base.requests_total if base else 0)
        errors += latest.errors_total - (base.errors_total if base else 0)
        if len(latest.latency_buckets) == len(buckets):
            before = list(base.latency_buckets) if base and len(base.latency_buckets) == len(buckets) else []
            for index, count in enumerate(latest.latency_buckets):
                buckets[index] += count - (before[index] if before else 0)
        else:
            unbucketed_p99 = max([unbucketed_p99, *(beat.p99_latency_ms for beat in window)])
    # The p99 of fewer than 200 calls would be its slowest call or two: those are left out, so
    # that one hiccup of a loaded host is not read as the version's latency.
    q = min(0.99, 1 - 2 / calls) if calls > 2 else 0.5
    return CallFigures(
        calls=calls,
        errors=errors,
        p50_ms=bucket_percentile(buckets, 0.5),
        p99_ms=max(bucket_percentile(buckets, q), unbucketed_p99),
    )


def open_repository(folder: Path, settings: RegistrySettings) -> ReleaseRepository:
    """Opens the registry's TUF repository, creating it (and its keys) on first start. The
    registry's folder holds its online signing keys: owner-only, like every secret folder."""
    ensure_private_dir(folder)
    keys = KeyStore(folder / "keys")
    keys.make_private()
    lifetimes = Lifetimes(timestamp=timedelta(minutes=settings.timestamp_lifetime_minutes))
    repo_dir = folder / "tuf"
    if (repo_dir / "metadata" / "1.root.json").exists():
        online = {"snapshot": keys.load("snapshot"), "timestamp": keys.load("timestamp")}
        return ReleaseRepository(repo_dir, online=online, lifetimes=lifetimes)
    return ReleaseRepository.create(
        repo_dir,
        root_signers=[keys.generate("root", i) for i in range(settings.root_keys)],
        root_threshold=min(settings.root_threshold, settings.root_keys),
        targets_signer=keys.generate("targets"),
        snapshot_signer=keys.generate("snapshot"),
        timestamp_signer=keys.generate("timestamp"),
        services=SERVICES,  # publisher keys come later, from the publishers (SetPublisherKey)
        lifetimes=lifetimes,
    )


def _alert_key(advisory_id: str, service: str, package: str, deadline: float) -> tuple[str, str, str, int]:
    """What makes an overdue alert the same one: the finding and its deadline (to the millisecond,
    so a deadline read back from the stream matches the one computed)."""
    return (advisory_id, service, package, round(deadline * 1000))


def _require_operator(caller: Caller, what: str) -> None:
    require_patch_role(caller.role, what)


class Registry:
    def __init__(
        self,
        *,
        bus: EventBus,
        repo: ReleaseRepository,
        keys: KeyStore,
        settings: RegistrySettings,
        fleet: FleetView,
        schema_census: SchemaCensus,
    ) -> None:
        self.bus = bus
        self.schema_census = schema_census
        self.repo = repo
        self.keys = keys
        self.settings = settings
        self.fleet = fleet
        self.advisories: dict[str, Advisory] = {}
        self._advisory_modified: dict[str, str] = {}
        self.findings = FindingBook(settings.deadline_policy())
        self.rollouts: dict[str, Rollout] = {}
        self._rollout_seq: dict[str, int] = {}
        self._release_publishers: dict[str, str] = {}
        # The overdue alerts on the stream: (advisory, service, package, deadline in ms).
        self._announced_overdue: set[tuple[str, str, str, int]] = set()
        self._finding_seq: dict[str, int] = {}  # a finding's subject -> its last event's stream seq
        self._finding_version: dict[str, int] = {}  # ... and how many events it holds
        self._step_started_at: dict[tuple[str, int], float] = {}
        self._phase_since: dict[tuple[str, int], float] = {}  # when a step's current phase began
        self._lock = asyncio.Lock()
        self._replay: Replay | None = None

    async def start(self) -> None:
        self._replay = await self.bus.replay(stream="PATCH", filter_subject=PATCH_FILTER, handler=self._apply)
        await self._replay.wait_caught_up()

    # ---- projection ---------------------------------------------------------------------------

    async def _apply(self, event: ReceivedEvent) -> None:
        payload = open_payload(event.envelope)
        if isinstance(payload, events_pb2.AdvisoryImported):
            self.advisories[payload.advisory_id] = parse_advisory(json.loads(payload.osv_json))
            self._advisory_modified[payload.advisory_id] = payload.modified
            return
        if isinstance(payload, events_pb2.ReleasePublished):
            self._release_publishers[payload.target_path] = payload.published_by
            return
        if isinstance(payload, events_pb2.VulnerabilityOverdue):
            self._announced_overdue.add(
                _alert_key(payload.advisory_id, payload.service, payload.package, payload.deadline)
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
        if isinstance(payload, events_pb2.InstanceStarted):
            self._step_started_at[(payload.rollout_id, payload.step)] = time.monotonic()
        if isinstance(payload, events_pb2.GateEvaluated) and payload.passed and payload.weight < 100:
            # A larger share: a new phase with its own analysis window and its own time.
            self._step_started_at[(payload.rollout_id, payload.step)] = time.monotonic()
            self._phase_since[(payload.rollout_id, payload.step)] = time.monotonic()

    async def _append(
        self,
        subject: str,
        aggregate_type: str,
        aggregate_id: str,
        payloads: Iterable[Message],
        actor: Actor,
        *,
        version: int,
        expected: int | None,
    ) -> None:
        assert self._replay is not None
        last = 0
        for offset, payload in enumerate(payloads):
            appended = await self.bus.append(
                subject,
                NewEvent(aggregate_type=aggregate_type, aggregate_id=aggregate_id, payload=payload, actor=actor),
                aggregate_version=version + offset + 1,
                expected_last_subject_seq=expected if offset == 0 else None,
            )
            last = appended.stream_seq
        if last:
            await self._replay.wait_for_seq(last)

    async def _record(self, rollout_id: str, events: list[RolloutEvent], actor: Actor) -> Rollout:
        """Appends the events, then logs each: the registry's log tells a roll-out's story too."""
        existing = self.rollouts.get(rollout_id)
        await self._append(
            rollout_subject(rollout_id),
            "rollout",
            rollout_id,
            [codec.to_proto(e) for e in events],
            actor,
            version=len(existing.history) if existing else 0,
            expected=self._rollout_seq.get(rollout_id, 0),
        )
        rollout = self.rollouts[rollout_id]
        for event in events:
            log.info(
                "roll-out %s (%s %s -> %s): %s by %s%s",
                rollout_id,
                rollout.service,
                rollout.from_version,
                rollout.to_version,
                type(event).__name__,
                event.actor,
                f": {detail}" if (detail := describe(event)) else "",
            )
        return rollout

    # ---- releases -----------------------------------------------------------------------------

    def _known_service(self, service: str) -> None:
        if service not in SERVICES:
            raise InvalidArgument(f"unknown service {service!r}; one of {', '.join(SERVICES)}")

    async def set_publisher_key(self, caller: Caller, *, service: str, public_key_pem: str) -> str:
        """Delegates `<service>/*` to the publisher's key; returns its key id. Audited on the PATCH stream."""
        _require_operator(caller, "setting a publisher key")
        self._known_service(service)
        key = parse_public_key(public_key_pem)
        async with self._lock:
            await asyncio.to_thread(self.repo.delegate_publisher_key, service, key, self.keys.load("targets"))
            # A repository made before publishers held their keys kept this one here: not any more.
            self.keys.remove(delegated_role(service))
            event = events_pb2.PublisherKeySet(service=service, keyid=key.keyid, set_by=caller.user_id)
            await self._append(
                release_subject(service), "release", service, [event], _by(caller), version=0, expected=None
            )
        return key.keyid

    def prepare_root_rotation(self, caller: Caller, *, public_keys_pem: list[str], threshold: int) -> bytes:
        """Root v(n+1) with these keys, unsigned: the operator signs it with the offline root keys."""
        _require_operator(caller, "rotating the root keys")
        keys = [parse_public_key(pem) for pem in public_keys_pem]
        return self.repo.prepare_root(keys, threshold).to_bytes()

    async def rotate_root(self, caller: Caller, signed_root: bytes) -> tuple[int, list[str], int]:
        """Publishes the offline-signed root; returns its version, root key ids and threshold."""
        _require_operator(caller, "rotating the root keys")
        async with self._lock:
            root = await asyncio.to_thread(self.repo.apply_root, signed_root)
            role = root.roles["root"]
            event = events_pb2.RootRotated(
                version=root.version, keyids=list(role.keyids), threshold=role.threshold, rotated_by=caller.user_id
            )
            await self._append(
                trust_root_subject(), "trust", "root", [event], _by(caller), version=root.version - 2, expected=None
            )
        return root.version, list(role.keyids), role.threshold

    def prepare_release(
        self,
        caller: Caller,
        *,
        service: str,
        version: str,
        wheel_name: str,
        sha256: str,
        length: int,
        fixes: list[str],
        min_event_schema: int,
    ) -> tuple[bytes, str, list[str]]:
        """The unsigned metadata the publisher signs, its role and the keys that may sign it."""
        _require_operator(caller, "publishing a release")
        self._known_service(service)
        prepared = self.repo.prepare(
            service=service,
            version=version,
            wheel_name=wheel_name,
            sha256=sha256,
            length=length,
            fixes=fixes,
            min_event_schema=min_event_schema or 1,
        )
        return prepared.to_bytes(), delegated_role(service), self.repo.publisher_keyids(service)

    async def publish_release(
        self,
        caller: Caller,
        *,
        service: str,
        version: str,
        wheel_name: str,
        wheel: bytes,
        signed_metadata: bytes,
    ) -> ReleaseInfo:
        _require_operator(caller, "publishing a release")
        self._known_service(service)
        if not signed_metadata:
            raise InvalidArgument(
                "a release needs its metadata signed by the service's publisher key (PrepareRelease, sign, "
                "then PublishRelease with signed_metadata); `parley patch publish` does all three"
            )
        async with self._lock:
            info = self.repo.publish_signed(service=service, signed=signed_metadata, wheel=wheel)
            if (info.version, info.target_path) != (version, f"{service}/{wheel_name}"):
                raise InvalidArgument(f"the signed metadata publishes {info.target_path} {info.version}, not {version}")
            event = events_pb2.ReleasePublished(
                service=info.service,
                version=info.version,
                target_path=info.target_path,
                sha256=info.sha256,
                length=info.length,
                fixes=list(info.fixes),
                min_event_schema=info.min_event_schema,
                published_by=caller.user_id,
            )
            await self._append(
                release_subject(service), "release", service, [event], _by(caller), version=0, expected=None
            )
        return info

    async def publish_base_release(self, *, service: str, version: str, wheel_name: str, wheel: bytes) -> ReleaseInfo:
        """The version a service ran before any release (its platform publishes it at first start)."""
        self._known_service(service)
        for info in self.repo.releases(service):
            if info.version == version:
                return info  # published already (by its platform earlier, or by a publisher)
        async with self._lock:
            info = await asyncio.to_thread(
                self.repo.publish_base,
                service=service,
                version=version,
                wheel_name=wheel_name,
                wheel=wheel,
                targets_signer=self.keys.load("targets"),
            )
            event = events_pb2.ReleasePublished(
                service=info.service,
                version=info.version,
                target_path=info.target_path,
                sha256=info.sha256,
                length=info.length,
                min_event_schema=info.min_event_schema,
                published_by=BASE_PUBLISHER,
            )
            await self._append(
                release_subject(service), "release", service, [event], Actor.PLATFORM, version=0, expected=None
            )
        log.info("base release %s %s published (%s)", service, version, info.target_path)
        return info

    def release(self, service: str, version: str) -> ReleaseInfo:
        for info in self.repo.releases(service):
            if info.version == version:
                return info
        raise NotFound(f"no published release {service} {version}; publish it first (`parley patch publish`)")

    # ---- advisories and findings --------------------------------------------------------------

    async def import_advisories(self, caller: Caller, records: list[str]) -> tuple[int, int, int]:
        _require_operator(caller, "importing advisories")
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
                if self._advisory_modified.get(advisory.id) == advisory.modified and advisory.id in self.advisories:
                    unchanged += 1
                    continue
                event = events_pb2.AdvisoryImported(advisory_id=advisory.id, modified=advisory.modified, osv_json=text)
                await self._append(
                    advisory_subject(advisory.id),
                    "advisory",
                    advisory.id,
                    [event],
                    _by(caller),
                    version=0,
                    expected=None,
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
        assert self._replay is not None
        subject = finding_subject(change.advisory_id, change.service, change.package)
        expected = self._finding_seq.get(subject, 0)
        # The same id for the same step of the same finding: two registries' appends are one.
        event_id = hashlib.sha256(f"{subject}|{type(change).__name__}|{expected}".encode()).hexdigest()[:32]
        try:
            appended = await self.bus.append(
                subject,
                NewEvent(
                    aggregate_type="finding",
                    aggregate_id="/".join(change.exposure),
                    payload=codec.to_proto(change),
                    actor=REGISTRY_ACTOR,
                    event_id=event_id,
                ),
                aggregate_version=self._finding_version.get(subject, 0) + 1,
                expected_last_subject_seq=expected,
            )
        except ConcurrencyConflict:
            last = await self.bus.last_subject_seq("PATCH", subject)
            await self._replay.wait_for_seq(last)
            return
        await self._replay.wait_for_seq(appended.stream_seq)
        if not appended.duplicate:  # a duplicate is the other registry's, logged there
            log.info("%s: %s in %s (%s)", type(change).__name__, change.advisory_id, change.service, change.package)

    async def announce_overdue(self) -> int:
        """One alert per overdue finding (a service exposed in a package past its deadline,
        naming one of its affected instances), on the registry's own PATCH stream
        (parley.patch.alert.overdue.<advisory id>), never in auth's audit chain: the replay knows
        the alerts already there, so neither a restart nor new instances raise one twice."""
        announced = 0
        for finding in self.findings.overdue(datetime.now(UTC)):
            key = _alert_key(finding.advisory_id, finding.service, finding.package, finding.deadline.timestamp())
            if key in self._announced_overdue:
                continue
            event_id = hashlib.sha256(repr(key).encode()).hexdigest()[:32]
            payload = events_pb2.VulnerabilityOverdue(
                advisory_id=finding.advisory_id,
                service=finding.service,
                instance_id=finding.instance_id,
                host=finding.host,
                package=finding.package,
                installed_version=finding.installed_version,
                priority=finding.score.priority,
                deadline=finding.deadline.timestamp(),
            )
            await self.bus.append(
                vulnerability_alert_subject("overdue", finding.advisory_id),
                NewEvent(
                    aggregate_type="vulnerability",
                    aggregate_id=finding.advisory_id,
                    payload=payload,
                    actor=REGISTRY_ACTOR,
                    event_id=event_id,
                ),
                aggregate_version=1,
                expected_last_subject_seq=None,
            )
            self._announced_overdue.add(key)
            announced += 1
        return announced

    # ---- roll-outs ----------------------------------------------------------------------------

    def rollout(self, rollout_id: str) -> Rollout:
        rollout = self.rollouts.get(rollout_id)
        if rollout is None:
            raise NotFound(f"no roll-out {rollout_id!r}; `parley patch list` shows them")
        return rollout

    async def plan(
        self,
        caller: Caller,
        *,
        service: str,
        to_version: str,
        force: bool = False,
        reason: str = "",
        reverts: str = "",
        weights: Sequence[int] = (),
    ) -> Rollout:
        release = self.release(service, to_version)
        if release.min_event_schema > 1:  # every envelope is at schema 1 or newer
            check_readable(service, to_version, release.min_event_schema, await self.schema_census())
        live = self.fleet.live(time.monotonic(), service)
        versions = {beat.version for beat in live}
        if len(versions) > 1:
            raise FailedPrecondition(
                f"{service} runs several versions ({', '.join(sorted(versions))}); finish that first"
            )
        busy = [r.rollout_id for r in self.rollouts.values() if r.service == service and not r.finished]
        if busy:
            raise FailedPrecondition(f"{service} already has an unfinished roll-out {busy[0]}")
        failed_before = [
            f"roll-out {r.rollout_id}: {r.failed_canary}"
            for r in self._in_order()
            if r.service == service and r.to_version == to_version and r.failed_canary
        ]
        rollout_id = uuid.uuid4().hex[:12]
        async with self._lock:
            _, events = Rollout.plan(
                rollout_id=rollout_id,
                service=service,
                from_version=versions.pop() if versions else "",
                to_version=to_version,
                target_path=release.target_path,
                # Host by host: every instance of one host is replaced before the next host's.
                old_instances=[b.instance_id for b in sorted(live, key=lambda b: (b.host, b.instance_id))],
                release_published_by=self._release_publishers.get(release.target_path, ""),
                actor=caller.user_id,
                actor_role=caller.role,
                at=time.time(),
                failed_before=failed_before,
                force=force,
                reason=reason,
                reverts=reverts,
                weights=tuple(weights) or DEFAULT_WEIGHTS,
            )
            return await self._record(rollout_id, events, _by(caller))

    def _in_order(self) -> list[Rollout]:
        return sorted(self.rollouts.values(), key=lambda r: r.history[0].at if r.history else 0.0)

    async def revert(self, caller: Caller, rollout_id: str, *, reason: str = "", force: bool = False) -> Rollout:
        """A finished roll-out undone: a new roll-out back to the version it replaced, planned by
        the caller and approved by another, gated like any other."""
        done = self.rollout(rollout_id)
        if done.state != "done":
            raise FailedPrecondition(f"roll-out {rollout_id} is {done.state}; only a done roll-out is reverted")
        if not done.from_version:
            raise FailedPrecondition(f"roll-out {rollout_id} does not say which version it replaced")
        why = f"revert of {rollout_id}" + (f": {reason.strip()}" if reason.strip() else "")
        return await self.plan(
            caller, service=done.service, to_version=done.from_version, force=force, reason=why, reverts=rollout_id
        )

    async def revert_service(self, caller: Caller, service: str, *, reason: str = "", force: bool = False) -> Rollout:
        """Back to the version that ran before the service's last finished roll-out."""
        self._known_service(service)
        done = [r for r in self._in_order() if r.service == service and r.state == "done"]
        if not done:
            raise FailedPrecondition(
                f"{service} has no finished roll-out to revert; it runs the version it started with"
            )
        return await self.revert(caller, done[-1].rollout_id, reason=reason, force=force)

    async def command(self, caller: Caller, rollout_id: str, action: str, reason: str = "") -> Rollout:
        """A person's command on a roll-out; `rollback` of a done roll-out plans its revert."""
        if action == "rollback" and self.rollout(rollout_id).state == "done":
            require_patch_role(caller.role, "rolling back a roll-out")
            return await self.revert(caller, rollout_id, reason=reason)
        if action not in ("approve", "pause", "resume", "rollback"):
            raise InvalidArgument(f"unknown roll-out command {action!r}")

        def decide(work: Rollout) -> list[RolloutEvent]:
            now = time.time()
            if action == "approve":
                return work.approve(actor=caller.user_id, actor_role=caller.role, at=now)
            if action == "pause":
                return work.pause(actor=caller.user_id, actor_role=caller.role, reason=reason, at=now)
            if action == "resume":
                return work.resume(actor=caller.user_id, actor_role=caller.role, at=now)
            return work.rollback(actor=caller.user_id, actor_role=caller.role, reason=reason, at=now)

        return await self._decide(rollout_id, decide, _by(caller))

    async def agent_report(
        self,
        rollout_id: str,
        what: str,
        *,
        host: str,
        instance_id: str = "",
        version: str = "",
        exit_code: int = 0,
        last_log_lines: Iterable[str] = (),
    ) -> Rollout:
        """What a node agent did for the current step (mutual TLS identifies it; it names its host)."""
        actor = f"node-agent@{host}" if host else "node-agent"

        def decide(work: Rollout) -> list[RolloutEvent]:
            now = time.time()
            if what == "started":
                return work.instance_started(instance_id=instance_id, version=version, at=now, actor=actor)
            if what == "drained":
                return work.drained(instance_id=instance_id, at=now, actor=actor)
            if what == "exited":
                lines = [line[:LOG_LINE_LIMIT] for line in last_log_lines][-LOG_LINES_KEPT:]
                return work.instance_exited(
                    instance_id=instance_id, exit_code=exit_code, last_log_lines=lines, at=now, actor=actor
                )
            return work.rolled_back(at=now, actor=actor)

        return await self._decide(rollout_id, decide, Actor.service(actor))

    async def _decide(self, rollout_id: str, decide: Callable[[Rollout], list[RolloutEvent]], actor: Actor) -> Rollout:
        """The roll-out's events decided on its newest state and appended after its last event.

        Another registry instance (a joined host's) may have appended first: the append is
        refused (the expected subject sequence moved on), this instance reads that event and
        decides again, so both instances drive one roll-out without a lease between them.
        """
        for _ in range(CONFLICT_ATTEMPTS):
            async with self._lock:
                events = decide(self.rollout(rollout_id).snapshot())
                if not events:
                    return self.rollout(rollout_id)
                try:
                    return await self._record(rollout_id, events, actor)
                except ConcurrencyConflict:
                    await self._catch_up(rollout_subject(rollout_id))
        raise Unavailable(f"roll-out {rollout_id} kept changing under another registry instance; try again")

    async def _catch_up(self, subject: str) -> None:
        """This instance's projection holds the subject's newest event (another instance's)."""
        assert self._replay is not None
        await self._replay.wait_for_seq(await self.bus.last_subject_seq("PATCH", subject))

    def _window(self, rollout: Rollout, instance_id: str, now: float, since: float | None) -> InstanceWindow:
        """The new instance's calls since its phase began (`since`; None: since it started), and
        the stable (old-version) instances' over the same time."""
        latest, first = self.fleet.latest(instance_id), self.fleet.first(instance_id)
        if latest is None or first is None:
            return InstanceWindow(instance_id, serving=False, reporting=False)
        beat, seen = latest
        stable = [
            other.instance_id
            for other in self.fleet.live(now, rollout.service)
            if other.version == rollout.from_version and other.instance_id != instance_id
        ]
        opened = first[1] if since is None else since
        return InstanceWindow(
            instance_id,
            serving=beat.health == "SERVING",
            reporting=now - seen <= self.fleet.stale_after_s,
            window_s=now - opened,
            canary=self.fleet.figures([instance_id], since=since),
            stable=self.fleet.figures(stable, since=opened),
        )

    async def drive(self) -> None:
        """Moves every roll-out on: starts steps, judges gates once their window has passed."""
        now = time.monotonic()
        for rollout_id, rollout in list(self.rollouts.items()):
            if rollout.state not in DRIVEN:
                continue

            def decide(work: Rollout, rollout_id: str = rollout_id) -> list[RolloutEvent]:
                if work.state not in DRIVEN:
                    return []  # another registry instance moved it on meanwhile
                step = work.steps[-1] if work.steps else None
                if step is None or (step.gate_passed and step.drained):
                    return work.next_step(at=time.time())
                if step.new_instance and step.gate_passed is None:
                    # The analysis window opens at the new instance's first heartbeat; the verdict
                    # waits for enough calls until the gate's time (from its start) is up.
                    started = self._step_started_at.setdefault((rollout_id, work.current_step), now)
                    seen = self.fleet.first(step.new_instance)
                    since = self._phase_since.get((rollout_id, work.current_step)) if step.phase else None
                    watched_for = now - max(seen[1], since or 0.0) if seen else 0.0
                    # A failure is a verdict as soon as it shows (a broken canary serves as few
                    # calls as possible); a pass needs the whole window and enough calls.
                    final = now - started >= self.settings.gate_timeout_seconds
                    if seen is not None or final:
                        window = self._window(work, step.new_instance, now, since)
                        settled = watched_for >= self.settings.gate_window_seconds
                        return work.gate(
                            window, self.settings.gate_policy(), at=time.time(), final=final, settled=settled
                        )
                return []

            await self._decide(rollout_id, decide, REGISTRY_ACTOR)


def _by(caller: Caller) -> Actor:
    """The envelope actor of what an operator's call records."""
    return Actor.user(caller.user_id)
