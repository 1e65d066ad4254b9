"""`parley patch …`: the operator's side of roll-outs (list, plan, approve, pause, resume, roll
back, revert, status). Publishing and keys are in release_commands, advisories and the fleet in
advisory_commands; all talk to the patch registry through registry_connection.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from parley.patch.v1 import patch_pb2

from parley_cli import advisory_commands, release_commands
from parley_cli.arguments import add_reason_option, command, command_group
from parley_cli.layout import table
from parley_cli.registry_connection import RegistryConnection, with_registry
from parley_cli.rollout_view import StatusWatch, audit_table, planned, print_rollout
from parley_cli.usernames import named

FINISHED = ("done", "rolled_back")


async def cmd_list(args: argparse.Namespace) -> int:
    async def work(c: RegistryConnection) -> int:
        releases = await c.call(c.patch.ListReleases, patch_pb2.ListReleasesRequest())
        print(
            table(
                ("service", "version", "fixes", "min schema", "artifact"),
                [
                    (r.service, r.version, ",".join(r.fixes) or "-", r.min_event_schema, r.target_path)
                    for r in releases.releases
                ],
            )
            if releases.releases
            else "no releases published"
        )
        rollouts = await c.call(c.patch.ListRollouts, patch_pb2.ListRolloutsRequest())
        names = await c.names(rollouts.rollouts)
        print()
        print(
            table(
                ("roll-out", "service", "from", "to", "state", "planned by", "approved by"),
                [
                    (
                        *(r.rollout_id, r.service, r.from_version, r.to_version, r.state),
                        named(r.planned_by, names),
                        named(r.approved_by, names) if r.approved_by else "-",
                    )
                    for r in rollouts.rollouts
                ],
            )
            if rollouts.rollouts
            else "no roll-outs"
        )
        return 0

    return await with_registry(args, work)


def _force_needs_reason(args: argparse.Namespace) -> bool:
    if args.force and not (args.reason or "").strip():
        print("error: --force needs a --reason (it goes into the audit)", file=sys.stderr)
        return False
    return True


async def cmd_rollout(args: argparse.Namespace) -> int:
    if not _force_needs_reason(args):
        return 2
    try:
        weights = [int(w) for w in args.weights.split(",")] if args.weights else []
    except ValueError:
        print(f"error: --weights {args.weights!r}: percentages separated by commas, e.g. 10,50,100", file=sys.stderr)
        return 2

    async def work(c: RegistryConnection) -> int:
        request = patch_pb2.PlanRolloutRequest(
            service=args.service,
            to_version=args.version,
            force=args.force,
            reason=args.reason or "",
            weights=weights,
        )
        rollout = await c.call(c.patch.PlanRollout, request, as_user=True)
        planned(rollout, await c.names([rollout]))
        return 0

    return await with_registry(args, work)


async def cmd_revert(args: argparse.Namespace) -> int:
    """Back to the version before the service's last finished roll-out: a new, gated, approved roll-out."""
    if not _force_needs_reason(args):
        return 2

    async def work(c: RegistryConnection) -> int:
        request = patch_pb2.RevertServiceRequest(service=args.service, reason=args.reason or "", force=args.force)
        rollout = await c.call(c.patch.RevertService, request, as_user=True)
        planned(rollout, await c.names([rollout]))
        return 0

    return await with_registry(args, work)


def _command(action: str) -> Any:
    async def run(args: argparse.Namespace) -> int:
        async def work(c: RegistryConnection) -> int:
            method = getattr(c.patch, f"{action}Rollout")
            request = patch_pb2.RolloutCommand(rollout_id=args.rollout_id, reason=getattr(args, "reason", "") or "")
            rollout = await c.call(method, request, as_user=True)
            if rollout.rollout_id != args.rollout_id:  # a done roll-out's rollback is a new roll-out back
                print(f"roll-out {args.rollout_id} is done; planned its revert:")
                planned(rollout, await c.names([rollout]))
                return 0
            print_rollout(rollout, await c.names([rollout]))
            return 0

        return await with_registry(args, work)

    return run


async def cmd_status(args: argparse.Namespace) -> int:
    """One view, or with --watch a refreshed view until the roll-out finishes."""
    if not args.rollout_id:  # argparse's "required" would not say where the ids are
        print(
            "usage: parley patch status ROLLOUT_ID: `parley patch list` lists the roll-outs with their ids",
            file=sys.stderr,
        )
        return 2

    async def work(c: RegistryConnection) -> int:
        watch = StatusWatch()
        while True:
            rollout = await c.call(c.patch.GetRollout, patch_pb2.GetRolloutRequest(rollout_id=args.rollout_id))
            if watch.changed(rollout):
                names = await c.names([rollout])
                watch.show(rollout, names)
            if not args.watch or rollout.state in FINISHED:
                if args.audit:
                    print(audit_table(rollout, names))
                return 0 if rollout.state != "rolled_back" else 1
            await asyncio.sleep(1.0)

    return await with_registry(args, work)


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    patch = command_group(sub, "patch", help="signed releases and roll-outs")
    release_commands.add_commands(patch)
    command(patch, "list", cmd_list, help="releases and roll-outs")
    rollout = command(
        patch, "rollout", cmd_rollout, help="plan a roll-out of a published version (needs another's approval)"
    )
    rollout.add_argument("service")
    rollout.add_argument("version")
    rollout.add_argument("--force", action="store_true", help="a release that failed a canary before (with --reason)")
    add_reason_option(rollout, help="why (recorded in the audit)")
    rollout.add_argument(
        "--weights", help="the new instance's share of callers at each gated phase, e.g. 10,50,100 (the default)"
    )
    revert = command(
        patch, "revert", cmd_revert, help="plan a roll-out back to the version before SERVICE's last finished roll-out"
    )
    revert.add_argument("service")
    add_reason_option(revert, help="why (recorded in the audit)")
    revert.add_argument("--force", action="store_true", help="even if that version failed a canary (with --reason)")
    for name, action, text in (
        ("approve", "Approve", "approve a planned roll-out (not your own)"),
        ("pause", "Pause", "hold a roll-out before its next step"),
        ("resume", "Resume", "continue a paused roll-out"),
        ("rollback", "Rollback", "roll back to the previous version (a done roll-out: plans its revert)"),
    ):
        p = command(patch, name, _command(action), help=text)
        p.add_argument("rollout_id")
        if name in ("pause", "rollback"):
            p.add_argument("--reason", default="")
    status = command(patch, "status", cmd_status, help="a roll-out's steps and gates")
    status.add_argument("rollout_id", nargs="?", help="from `parley patch list`")
    status.add_argument("--watch", action="store_true", help="follow it until it finishes")
    status.add_argument("--audit", action="store_true", help="print every audited event")
    advisory_commands.add_commands(sub)
