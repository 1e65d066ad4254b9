"""What every registry command shares: the projection rebuilt from the PATCH stream, the one way
to write to it (parley_core.event_log), the fleet view and the TUF repository.

State is rebuilt from the PATCH stream at start (advisories, findings and roll-outs) and from
the TUF repository on disk (releases). A command decides on what the projection holds, appends
the events at the aggregate's position, and its own write is applied before it answers: what is
in memory is always what is in the stream. A second registry instance may run on a joined host
too (docs/deploy.md): both follow the stream and decide on what they replayed, so a decision the
other made first is read and decided again (parley_core.event_log); both write one TUF repository
in a folder the hosts share, one change at a time (TufStore.exclusive).
"""

from __future__ import annotations

import asyncio

from google.protobuf.message import Message

from parley_core.actor import Actor
from parley_core.bus import EventBus, ReceivedEvent
from parley_core.envelope import NewEvent
from parley_core.errors import InvalidArgument, NotFound
from parley_core.event_log import EventLog, Position
from parley_core.tokens import Caller
from parley_core.topology import PATCH_FILTER, SERVICES
from parley_patch_registry.advisories import Advisory
from parley_patch_registry.findings import FindingBook
from parley_patch_registry.fleet_view import FleetView
from parley_patch_registry.key_store import KeyStore
from parley_patch_registry.projection import RegistryProjection
from parley_patch_registry.releases import ReleaseInfo, ReleaseRepository
from parley_patch_registry.rollout import Rollout
from parley_patch_registry.schemas import SchemaCensus
from parley_patch_registry.settings import RegistrySettings

# The envelope actor of what the registry records on its own (overdue alerts, automatic roll-out
# steps): "service:<name>" as every service writes it, so `parley audit query --actor
# service:patch-registry` finds them.
REGISTRY_ACTOR = Actor.service("patch-registry")


def actor_of(caller: Caller) -> Actor:
    """The envelope actor of what an operator's call records."""
    return Actor.user(caller.user_id)


class RegistryBase:
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
        self.state = RegistryProjection(settings.deadline_policy())
        # One command at a time: the TUF repository on disk and the fleet-wide decisions (a
        # service's one unfinished roll-out, a finding's next step) are decided on all of it.
        self._lock = asyncio.Lock()
        self._log: EventLog | None = None

    async def start(self) -> None:
        replay = await self.bus.replay(stream="PATCH", filter_subject=PATCH_FILTER, handler=self._apply)
        self._log = EventLog(self.bus, replay)
        await replay.wait_caught_up()

    async def _apply(self, event: ReceivedEvent) -> None:
        self.state.apply(event)

    @property
    def events(self) -> EventLog:
        assert self._log is not None, "the event log is set up at start"
        return self._log

    @property
    def advisories(self) -> dict[str, Advisory]:
        return self.state.advisories

    @property
    def findings(self) -> FindingBook:
        return self.state.findings

    @property
    def rollouts(self) -> dict[str, Rollout]:
        return self.state.rollouts

    async def _append(
        self, subject: str, aggregate_type: str, aggregate_id: str, payload: Message, actor: Actor, *, at: Position
    ) -> None:
        event = NewEvent(aggregate_type=aggregate_type, aggregate_id=aggregate_id, payload=payload, actor=actor)
        await self.events.append(subject, [event], at)

    def _known_service(self, service: str) -> None:
        if service not in SERVICES:
            raise InvalidArgument(f"unknown service {service!r}; one of {', '.join(SERVICES)}")

    def published_sha256(self, target_path: str) -> str:
        """The sha256 the release's ReleasePublished event recorded ("" if none did): what agents
        install, since whoever holds the registry folder's keys can re-sign the target itself."""
        return self.state.release_hashes.get(target_path, "")

    def release(self, service: str, version: str) -> ReleaseInfo:
        for info in self.repo.releases(service):
            if info.version == version:
                return info
        raise NotFound(f"no published release {service} {version}; publish it first (`parley patch publish`)")
