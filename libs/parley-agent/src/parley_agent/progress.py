"""What the node agent tells of a roll-out as it happens (`parley up` prints it): one line per
step, verdict and state, in order, each once; people by name where known."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

from parley.patch.v1 import patch_pb2


class ProgressTeller:
    def __init__(
        self,
        *,
        announce: Callable[[str], None],
        warn: Callable[[str], None],
        usernames: Callable[[Sequence[str]], Awaitable[dict[str, str]]] | None,
    ) -> None:
        self.announce = announce
        self.warn = warn
        # The names of the people a roll-out records by id (`parley up` asks storage's archive).
        self._usernames = usernames
        self._names: dict[str, str] = {}
        self._told: dict[str, list[str]] = {}

    async def tell(self, rollout: patch_pb2.Rollout) -> None:
        """Each new step, verdict and state of a roll-out, once, in order; people by name where known.

        What was told is kept as lines with ids, so a name found later does not tell a line again."""
        lines = rollout_progress(rollout)
        told = self._told.setdefault(rollout.rollout_id, [])
        title = (
            f"roll-out {rollout.rollout_id} ({rollout.service} {rollout.from_version or '?'} -> {rollout.to_version})"
        )
        start = len(told) if lines[: len(told)] == told else 0
        new = [i for i in range(start, len(lines)) if lines[i] not in told]
        if new:
            named = rollout_progress(rollout, await self._people(rollout))
            for i in new:
                self.announce(f"{title}: {named[i]}")
        self._told[rollout.rollout_id] = lines

    async def _people(self, rollout: patch_pb2.Rollout) -> dict[str, str]:
        """Names of who planned and approved, asked once each (a failed lookup leaves the id)."""
        unknown = [u for u in (rollout.planned_by, rollout.approved_by) if u and u not in self._names]
        if unknown and self._usernames is not None:
            try:
                self._names.update(await self._usernames(unknown))
            except Exception as error:  # a courtesy: the lines are told with ids rather than not at all
                self.warn(f"no names for {', '.join(unknown)}: {error!r}")
        return self._names

    async def finish(self, rollout: patch_pb2.Rollout) -> None:
        """A finished roll-out's last lines (the verdict, done or rolled back), if it was being told."""
        if rollout.rollout_id in self._told:
            await self.tell(rollout)
            del self._told[rollout.rollout_id]


def rollout_progress(rollout: patch_pb2.Rollout, names: Mapping[str, str] | None = None) -> list[str]:
    """What has happened to a roll-out so far, one line per step, verdict and state (people by
    their names where `names` has them, else by id)."""
    names = names or {}
    planner = names.get(rollout.planned_by, rollout.planned_by)
    lines = [f"planned by {planner}" + (f" ({rollout.reason})" if rollout.reason else "")]
    if rollout.approved_by:
        lines.append(f"approved by {names.get(rollout.approved_by, rollout.approved_by)}")
    verdicts = [a.detail for a in rollout.audit if a.event == "GateEvaluated"]
    for index, step in enumerate(rollout.steps):
        where = "canary" if index == 0 else f"step {index}"
        if step.new_instance:
            lines.append(f"{where}: {step.new_instance} started beside {step.replaces_instance}")
        if step.exited:
            lines.append(f"{where}: {step.new_instance} {step.exited}")
        for detail in (d for d in verdicts if d.startswith(f"step {index} ")):
            lines.append(f"{where}: gate {detail}")
        if step.drained:
            lines.append(f"{where}: {step.replaces_instance} drained")
    if rollout.state in ("rolling_back", "rolled_back"):
        lines.append(f"rolling back: {rollout.rollback_reason}")
    if rollout.state in ("done", "rolled_back"):
        lines.append(rollout.state.replace("_", " "))
    return lines
