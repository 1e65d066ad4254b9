"""The registry's roll-out commands: a person's (plan, approve, pause, resume, roll back,
revert), a node agent's reports of what it did, and the registry's own moves (the next step, a
gate's verdict), each through the one way a roll-out changes (RolloutCommands._change)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from functools import partial

from parley_core.actor import Actor
from parley_core.envelope import NewEvent
from parley_core.errors import FailedPrecondition, InvalidArgument, NotFound
from parley_core.tokens import Caller
from parley_core.topology import rollout_subject
from parley_patch_registry import codec
from parley_patch_registry.gate import DEFAULT_WEIGHTS, InstanceWindow
from parley_patch_registry.patch_roles import require_patch_role
from parley_patch_registry.registry_base import REGISTRY_ACTOR, RegistryBase, actor_of
from parley_patch_registry.rollout import Rollout
from parley_patch_registry.rollout_events import RolloutEvent, describe
from parley_patch_registry.schemas import check_readable

log = logging.getLogger(__name__)
# What of a crashed instance's log the audit keeps: its last lines, each cut to a length.
LOG_LINES_KEPT = 20
LOG_LINE_LIMIT = 500
# An agent's host name, instance id and version, kept in the roll-out's history (an agent's own are
# far shorter: instances.py names an instance by service, version and 6 hex digits).
REPORTED_NAME_LIMIT = 200
# The states in which the registry moves a roll-out on by itself.
DRIVEN = ("approved", "canary", "production")


class RolloutCommands(RegistryBase):
    def rollout(self, rollout_id: str) -> Rollout:
        return _existing(self.rollouts.get(rollout_id), rollout_id)

    async def _change(
        self, rollout_id: str, actor: Actor, decide: Callable[[Rollout | None], Sequence[RolloutEvent]]
    ) -> Rollout:
        """The one way a roll-out changes (parley_core.event_log): `decide` makes its events from
        the roll-out as the stream holds it (None: a new one); they are appended, then logged
        each: the registry's log tells a roll-out's story too."""

        def decided(rollout: Rollout | None) -> tuple[list[NewEvent], Sequence[RolloutEvent]]:
            events = decide(rollout)
            return [NewEvent("rollout", rollout_id, codec.to_proto(e), actor) for e in events], events

        after, events = await self.events.decide_and_append(
            rollout_subject(rollout_id),
            lambda: self.rollouts.get(rollout_id),
            decided,
            position=lambda _: self.state.rollout_position(rollout_id),
        )
        rollout = self.rollout(rollout_id) if after is None else after
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
        rollout_id = uuid.uuid4().hex[:12]

        def decide(_: Rollout | None) -> list[RolloutEvent]:
            # Decided again on every roll-out's newest state when another registry recorded a
            # plan meanwhile (a new roll-out's position: projection.rollout_position).
            live = self.fleet.live(time.monotonic(), service)
            versions = {beat.version for beat in live}
            if len(versions) > 1:
                raise FailedPrecondition(
                    f"{service} runs several versions ({', '.join(sorted(versions))}); finish that first"
                )
            busy = [r.rollout_id for r in self.rollouts.values() if r.service == service and not r.finished]
            if busy:
                raise FailedPrecondition(f"a roll-out of {service} is already under way: {busy[0]}")
            failed_before = [
                f"roll-out {r.rollout_id}: {r.failed_canary}"
                for r in self._in_order()
                if r.service == service and r.to_version == to_version and r.failed_canary
            ]
            _, events = Rollout.plan(
                rollout_id=rollout_id,
                service=service,
                from_version=versions.pop() if versions else "",
                to_version=to_version,
                target_path=release.target_path,
                # Host by host: every instance of one host is replaced before the next host's.
                old_instances=[b.instance_id for b in sorted(live, key=lambda b: (b.host, b.instance_id))],
                release_published_by=self.state.release_publishers.get(release.target_path, ""),
                actor=caller.user_id,
                actor_role=caller.role,
                at=time.time(),
                failed_before=failed_before,
                force=force,
                reason=reason,
                reverts=reverts,
                weights=tuple(weights) or DEFAULT_WEIGHTS,
            )
            return events

        async with self._lock:
            return await self._change(rollout_id, actor_of(caller), decide)

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

        def decide(rollout: Rollout | None) -> list[RolloutEvent]:
            work = _existing(rollout, rollout_id).snapshot()
            now = time.time()
            if action == "approve":
                events = work.approve(actor=caller.user_id, actor_role=caller.role, at=now)
            elif action == "pause":
                events = work.pause(actor=caller.user_id, actor_role=caller.role, reason=reason, at=now)
            elif action == "resume":
                events = work.resume(actor=caller.user_id, actor_role=caller.role, at=now)
            else:
                events = work.rollback(actor=caller.user_id, actor_role=caller.role, reason=reason, at=now)
            return events

        async with self._lock:
            return await self._change(rollout_id, actor_of(caller), decide)

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
        for name, value in (("host", host), ("instance_id", instance_id), ("version", version)):
            if len(value) > REPORTED_NAME_LIMIT:
                raise InvalidArgument(f"{name} must be at most {REPORTED_NAME_LIMIT} characters")
        actor = f"node-agent@{host}" if host else "node-agent"

        def decide(rollout: Rollout | None) -> list[RolloutEvent]:
            work = _existing(rollout, rollout_id).snapshot()
            now = time.time()
            if what == "started":
                events = work.instance_started(instance_id=instance_id, version=version, at=now, actor=actor)
            elif what == "drained":
                events = work.drained(instance_id=instance_id, at=now, actor=actor)
            elif what == "exited":
                lines = [line[:LOG_LINE_LIMIT] for line in last_log_lines][-LOG_LINES_KEPT:]
                events = work.instance_exited(
                    instance_id=instance_id, exit_code=exit_code, last_log_lines=lines, at=now, actor=actor
                )
            else:
                events = work.rolled_back(at=now, actor=actor)
            return events

        async with self._lock:
            return await self._change(rollout_id, Actor.service(actor), decide)

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
            if rollout.state in DRIVEN:
                async with self._lock:
                    await self._change(rollout_id, REGISTRY_ACTOR, partial(self._next_move, rollout_id, now))

    def _next_move(self, rollout_id: str, now: float, rollout: Rollout | None) -> list[RolloutEvent]:
        """What the registry does on its own next: the next step, or a gate's verdict."""
        work = _existing(rollout, rollout_id).snapshot()
        if work.state not in DRIVEN:
            return []
        step = work.steps[-1] if work.steps else None
        if step is None or (step.gate_passed and step.drained):
            return work.next_step(at=time.time())
        if not step.new_instance or step.gate_passed is not None:
            return []
        # The analysis window opens at the new instance's first heartbeat; the verdict
        # waits for enough calls until the gate's time (from its start) is up.
        started = self.state.step_started_at.setdefault((rollout_id, work.current_step), now)
        seen = self.fleet.first(step.new_instance)
        since = self.state.phase_since.get((rollout_id, work.current_step)) if step.phase else None
        watched_for = now - max(seen[1], since or 0.0) if seen else 0.0
        # A failure is a verdict as soon as it shows (a broken canary serves as few
        # calls as possible); a pass needs the whole window and enough calls.
        final = now - started >= self.settings.gate_timeout_seconds
        if seen is None and not final:
            return []
        window = self._window(work, step.new_instance, now, since)
        settled = watched_for >= self.settings.gate_window_seconds
        return work.gate(window, self.settings.gate_policy(), at=time.time(), final=final, settled=settled)


def _existing(rollout: Rollout | None, rollout_id: str) -> Rollout:
    if rollout is None:
        raise NotFound(f"no roll-out {rollout_id!r}; `parley patch list` shows them")
    return rollout
