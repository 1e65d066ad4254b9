"""A release rolled out the way operators do it from the CLI: published by pat, planned by olga,
approved by oscar (three people, as the registry requires), each `parley` command in a thread so
the test's clients go on sending meanwhile."""

from __future__ import annotations

import asyncio
from pathlib import Path

from parley_testing.platform import RunningPlatform
from parley_testing.waiting import eventually


async def cli(platform: RunningPlatform, *args: str) -> str:
    """The `parley` command in a thread, so the clients keep sending meanwhile."""
    return (await asyncio.to_thread(platform.cli, *args)).stdout


async def roll_out(platform: RunningPlatform, service: str, version: str, source: Path) -> str:
    """`service` `version` built from `source`, published, planned and approved: the roll-out's id."""
    published = await cli(platform, "--as", "pat", "patch", "publish", service, version, "--source", str(source))
    assert f"published {service} {version}" in published
    planned = await cli(platform, "--as", "olga", "patch", "rollout", service, version)
    rollout_id = planned.split()[1].rstrip(":")
    assert "approved by oscar" in await cli(platform, "--as", "oscar", "patch", "approve", rollout_id)
    return rollout_id


async def rollout_ended(platform: RunningPlatform, rollout_id: str, timeout: float = 600) -> str:
    """`parley patch status` once the roll-out is done or rolled back (it exits 1 then: its status says why)."""

    async def ended() -> str | None:
        status = (await asyncio.to_thread(platform.cli, "patch", "status", rollout_id, check=False)).stdout
        return status if "state: done" in status or "state: rolled_back" in status else None

    return await eventually(ended, "the roll-out to finish", timeout)
