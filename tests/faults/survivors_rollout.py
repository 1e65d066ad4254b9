"""A messaging release published before a host's loss, rolled out afterwards over the surviving
hosts through a joined host's patch registry (the host-loss tests' roll-out step)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from failover import FailoverSender

from parley_testing.operators import OperatorTokens
from parley_testing.platform import TEST_DEFAULTS
from parley_testing.waiting import eventually, until

MESSAGING_SOURCE = Path(__file__).resolve().parents[2] / "services" / "messaging"
NEW_VERSION = "0.2.0"
# Short gate windows, as in tests/e2e/test_hosts.py: a roll-out step is judged on 3 s of calls.
ROLLOUT_ENV = {"PARLEY_PATCH_GATE_WINDOW_SECONDS": "3"}
OPERATORS = ("pat", "olga", "oscar")  # publisher, planner, approver: three people

Within = Callable[[Sequence[str]], list[str]]


def run_parley(
    data_dir: Path, *args: str, within: Within = list, env: Mapping[str, str] = ROLLOUT_ENV
) -> subprocess.CompletedProcess[str]:
    """The `parley` command on a host's folder, on that host (run it in a thread: clients go on)."""
    argv = within([sys.executable, "-m", "parley_cli", "--data-dir", str(data_dir), *args])
    env = {**os.environ, **TEST_DEFAULTS, **env}
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=180, check=False)


def parley(data_dir: Path, *args: str, within: Within = list) -> str:
    done = run_parley(data_dir, *args, within=within)
    assert done.returncode == 0, f"`parley {' '.join(args)}` failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


async def publish_a_messaging_release(first: Path, others: Sequence[Path], *, within: Within = list) -> None:
    """A release signed by its publisher, in the registry folder every registry of the fleet uses;
    the operators logged in on every host's folder."""
    operators = OperatorTokens()
    await operators.publish_on_platform(first)
    for user in OPERATORS:
        for folder in (first, *others):
            operators.save_cli_login(folder, user)

    async def key_created() -> bool | None:
        """Once the registry has read the operators' signing key from the AUTH stream."""
        done = await asyncio.to_thread(
            run_parley, first, "--as", "pat", "patch", "key", "create", "messaging", within=within
        )
        if "unknown or retired key" in done.stderr:
            return None
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
        return True

    await eventually(key_created, "the registry to know the operators' signing key", 60)
    published = await asyncio.to_thread(
        parley,
        first,
        *("--as", "pat", "patch", "publish", "messaging", NEW_VERSION, "--source", str(MESSAGING_SOURCE)),
        within=within,
    )
    assert f"published messaging {NEW_VERSION}" in published


def _live_messaging(shown: str) -> list[list[str]]:
    """`parley fleet`'s serving messaging rows: name, version, instance, host, health…"""
    rows = [row.split() for row in shown.splitlines() if row.startswith("messaging ")]
    return [row for row in rows if row[4] == "SERVING"]


async def roll_out_messaging(folder: Path, survivors: set[str], *, within: Within = list) -> dict[str, object]:
    """Planned by one operator and approved by another through the registry `folder`'s host runs,
    once the lost host's messaging has gone stale there (a plan replaces live instances only);
    every step done by a surviving host's agent. Its figures."""

    async def only_survivors_live() -> str | None:
        shown = await asyncio.to_thread(parley, folder, "fleet", within=within)
        live = _live_messaging(shown)
        return shown if live and all(row[3] in survivors for row in live) else None

    await eventually(only_survivors_live, "the lost host's messaging stale in the surviving registry", 60)
    planned = await asyncio.to_thread(
        parley, folder, "--as", "olga", "patch", "rollout", "messaging", NEW_VERSION, within=within
    )
    rollout_id = planned.split()[1].rstrip(":")
    await asyncio.to_thread(parley, folder, "--as", "oscar", "patch", "approve", rollout_id, within=within)

    async def finished() -> str | None:
        status = await asyncio.to_thread(parley, folder, "patch", "status", rollout_id, within=within)
        return status if "state: done" in status or "state: rolled_back" in status else None

    status = await eventually(finished, "the roll-out through the surviving registry to finish", 600)
    assert "state: done" in status, status
    audit = await asyncio.to_thread(parley, folder, "patch", "status", rollout_id, "--audit", within=within)
    started = [re.search(r"node-agent@(\S+)", line) for line in audit.splitlines() if "InstanceStarted" in line]
    started_by = [m.group(1) for m in started if m]
    assert started_by, audit
    assert set(started_by) <= survivors, audit

    async def new_version_serving() -> list[list[str]] | None:
        live = _live_messaging(await asyncio.to_thread(parley, folder, "fleet", within=within))
        return live if live and all(row[1] == NEW_VERSION for row in live) else None

    live = await eventually(new_version_serving, f"messaging {NEW_VERSION} serving on the surviving hosts", 60)
    return {"rollout_state": "done", "rollout_steps": len(started_by), "rolled_out_on": sorted({r[3] for r in live})}


async def roll_out_under_sends(
    senders: Sequence[FailoverSender], gateway: str, folder: Path, survivors: set[str], *, within: Within = list
) -> dict[str, object]:
    """`roll_out_messaging` once every sender is on the surviving `gateway` (a send in flight on the
    lost one fails at its deadline): from here on no call may fail. With the sends acknowledged and
    the calls refused meanwhile."""
    await until(
        lambda: all(s.addresses[s.at] == gateway for s in senders), "every sender on the surviving gateway", 120
    )
    refused, acked = sum(s.refused for s in senders), sum(len(s.acknowledged) for s in senders)
    rolled = await roll_out_messaging(folder, survivors, within=within)
    rolled["acknowledged_during_rollout"] = sum(len(s.acknowledged) for s in senders) - acked
    rolled["refused_during_rollout"] = sum(s.refused for s in senders) - refused
    return rolled


def assert_rolled_out_under_sends(figures: dict[str, object], survivors: set[str]) -> None:
    assert figures["refused_during_rollout"] == 0, figures
    assert figures["rolled_out_on"] == sorted(survivors), figures
    assert int(figures["acknowledged_during_rollout"]) > 0, figures  # type: ignore[call-overload]
