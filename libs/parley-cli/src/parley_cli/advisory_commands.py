"""`parley advisories …` and `parley fleet`: the OSV advisories the registry holds, and which
running instances they affect, with their deadlines."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from parley.fleet.v1 import fleet_pb2
from parley.patch.v1 import patch_pb2

from parley_cli.arguments import command, command_group
from parley_cli.layout import due, table
from parley_cli.registry_connection import RegistryConnection, with_registry


def _osv_files(path: Path) -> list[str]:
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    return [f.read_text(encoding="utf-8") for f in files if f.is_file()]


async def cmd_advisories_import(args: argparse.Namespace) -> int:
    records = await asyncio.to_thread(_osv_files, Path(args.path))
    if not records:
        print(f"error: no OSV JSON files at {args.path}", file=sys.stderr)
        return 2

    async def work(c: RegistryConnection) -> int:
        request = patch_pb2.ImportAdvisoriesRequest(osv_json=records)
        result = await c.call(c.patch.ImportAdvisories, request, as_user=True, timeout=120)
        print(
            f"imported {result.imported}, unchanged {result.unchanged}, withdrawn {result.withdrawn} "
            f"(from {len(records)} files)"
        )
        return 0

    return await with_registry(args, work)


async def cmd_advisories_list(args: argparse.Namespace) -> int:
    async def work(c: RegistryConnection) -> int:
        findings = (await c.call(c.patch.ListFindings, patch_pb2.ListFindingsRequest())).findings
        if not findings:
            print("no running instance is affected by an imported advisory")
            return 0
        now = time.time()
        print(
            table(
                ("advisory", "priority", "cvss", "service", "instance", "package", "installed", "fixed in", "deadline"),
                [
                    (
                        f.advisory_id,
                        f.priority,
                        f"{f.cvss_score:.1f}" if f.cvss_score else "-",
                        f.service,
                        f.instance_id,
                        f.package,
                        f.installed_version,
                        ",".join(f.fixed_in) or "-",
                        due(f.deadline, now),
                    )
                    for f in findings
                ],
            )
        )
        return 1 if any(f.overdue for f in findings) else 0

    return await with_registry(args, work)


async def cmd_fleet(args: argparse.Namespace) -> int:
    async def work(c: RegistryConnection) -> int:
        instances = (await c.call(c.fleet.ListInstances, fleet_pb2.ListInstancesRequest())).instances
        findings = (await c.call(c.patch.ListFindings, patch_pb2.ListFindingsRequest())).findings
        now = time.time()
        rows = []
        for status in instances:
            beat = status.last_heartbeat
            mine = [f for f in findings if f.instance_id == beat.instance_id]
            nearest = min((f.deadline for f in mine), default=0.0)
            rows.append(
                (
                    beat.service,
                    beat.version,
                    beat.instance_id,
                    beat.host,
                    "STALE" if status.stale else beat.health,
                    len(beat.distributions),
                    f"{len(mine)} ({', '.join(sorted({f.priority for f in mine}))})" if mine else "0",
                    due(nearest, now) if mine else "-",
                )
            )
        print(
            table(("service", "version", "instance", "host", "health", "packages", "vulnerable", "next deadline"), rows)
            if rows
            else "no instance has reported yet"
        )
        return 0

    return await with_registry(args, work)


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    advisories = command_group(sub, "advisories", help="OSV advisories against the fleet")
    imp = command(advisories, "import", cmd_advisories_import, help="import OSV JSON (a file or a folder of *.json)")
    imp.add_argument("path")
    command(advisories, "list", cmd_advisories_list, help="vulnerable instances, priority and deadline")
    command(sub, "fleet", cmd_fleet, help="what runs where, what is vulnerable, deadlines")
