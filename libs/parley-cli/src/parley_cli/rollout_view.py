"""What `parley patch` prints of a roll-out: its steps, gates and verdicts, its audit, and the
refreshed view of `patch status --watch`."""

from __future__ import annotations

from datetime import UTC, datetime

from parley.patch.v1 import patch_pb2

from parley_cli.layout import table, when
from parley_cli.terminal import shown
from parley_cli.usernames import named


def print_rollout(rollout: patch_pb2.Rollout, names: dict[str, str], *, verdicts_from: int | None = None) -> None:
    """The view; with verdicts_from (--watch), each gate verdict from that one on, else the last."""
    print(f"roll-out {rollout.rollout_id}: {rollout.service} {rollout.from_version or '?'} -> {rollout.to_version}")
    print(f"state: {rollout.state}" + (f" ({shown(rollout.rollback_reason)})" if rollout.rollback_reason else ""))
    approved = f", approved by {named(rollout.approved_by, names)}" if rollout.approved_by else ""
    print(f"planned by {named(rollout.planned_by, names)}{approved}")
    if rollout.reverts:
        print(f"reverts roll-out {rollout.reverts}")
    if rollout.forced:
        print("FORCED over a canary this release failed before")
    if rollout.reason:
        print(f"reason: {shown(rollout.reason)}")
    if rollout.weights:
        print(f"each step: the new instance takes {'% -> '.join(map(str, rollout.weights))}% of callers, gated")
    total = len(rollout.old_instances)
    done = sum(1 for s in rollout.steps if s.drained)
    bar = "#" * done + "." * (total - done)
    print(f"progress: [{bar}] {done}/{total} instances replaced")
    if rollout.steps:
        rows = [
            (
                "canary" if i == 0 else f"step {i}",
                s.replaces_instance,
                s.new_instance or "-",
                s.gate,
                f"{s.weight}%" if s.weight else "-",
                "yes" if s.drained else "no",
            )
            for i, s in enumerate(rollout.steps)
        ]
        print(table(("step", "replaces", "new instance", "gate", "share", "old drained"), rows))
    for i, s in enumerate(rollout.steps):
        if s.exited:
            where = "canary" if i == 0 else f"step {i}"
            print(f"{where} {s.new_instance} {s.exited}; its last log lines:")
            for line in s.last_log_lines:
                print(f"  {shown(line)}")
    verdicts = gate_verdicts(rollout)
    if verdicts_from is None:
        if verdicts:
            print(f"last gate: {shown(verdicts[-1].detail)}")
        return
    for verdict in verdicts[verdicts_from:]:
        print(f"gate at {when(verdict.at)}: {shown(verdict.detail)}")


def gate_verdicts(rollout: patch_pb2.Rollout) -> list[patch_pb2.AuditEntry]:
    return [a for a in rollout.audit if a.event == "GateEvaluated"]


def audit_table(rollout: patch_pb2.Rollout, names: dict[str, str]) -> str:
    rows = [(when(a.at), named(a.actor, names), a.event, a.detail) for a in rollout.audit]
    return table(("when", "who", "event", "detail"), rows)


def planned(rollout: patch_pb2.Rollout, names: dict[str, str]) -> None:
    print_rollout(rollout, names)
    print(f"ask another operator to run: parley --as <them> patch approve {rollout.rollout_id}")


class StatusWatch:
    """What `patch status --watch` prints: the view whenever it changes (a step, its share, its
    gate), and every gate verdict with its figures, even those that came between two polls."""

    def __init__(self) -> None:
        self.last = ""
        self.verdicts_shown = 0

    def changed(self, rollout: patch_pb2.Rollout) -> bool:
        return self._summary(rollout) != self.last

    @staticmethod
    def _summary(rollout: patch_pb2.Rollout) -> str:
        steps = [(s.new_instance, s.gate, s.weight, s.drained) for s in rollout.steps]
        return f"{rollout.state}|{steps}|{len(gate_verdicts(rollout))}"

    def show(self, rollout: patch_pb2.Rollout, names: dict[str, str]) -> None:
        print(f"--- {datetime.now(UTC).strftime('%H:%M:%S')}")
        print_rollout(rollout, names, verdicts_from=self.verdicts_shown)
        self.last = self._summary(rollout)
        self.verdicts_shown = len(gate_verdicts(rollout))
