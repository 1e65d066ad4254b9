"""A roll-out on the platform as `make run` starts it: the node agent in `parley up` carries it out.

An operator publishes a new messaging version with `parley patch publish`, another plans it and
a third approves; the agent fetches it through TUF, starts it beside the running instance, and
drains the old one once the registry's gate passed. A client sends all the while: no send may
fail and history must hold every acknowledged message. After a restart of `parley up` the
platform still runs the new version.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from parley_core.net import free_port
from parley_testing.cli_rollout import cli, roll_out, rollout_ended
from parley_testing.operators import OperatorTokens
from parley_testing.platform import RunningPlatform
from parley_testing.traffic import history_count, sender_channel, sending
from parley_testing.waiting import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

MESSAGING_SOURCE = Path(__file__).resolve().parents[2] / "services" / "messaging"
NEW_VERSION = "0.2.0"


@pytest.fixture(scope="module")
def upgrading(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlatform]:
    running = RunningPlatform(
        data_dir=tmp_path_factory.mktemp("rollout") / "data",
        env={
            "PARLEY_REGISTRATION": "open",
            "PARLEY_HEARTBEAT_SECONDS": "1",
            "PARLEY_PATCH_GATE_WINDOW_SECONDS": "3",
            # A 3 s window's p99 is its slowest call or two: on CI's shared cores one scheduling
            # stall of 150 ms failed the latency comparison. This test is about replacing every
            # instance without a failed send; the latency gate is test_broken_canaries' subject.
            "PARLEY_PATCH_GATE_P99_SLACK_MS": "1000",
        },
        # Two messaging instances: the roll-out replaces each in turn, never both at once.
        up_args=("--gateway-port", str(free_port()), "--instances", "messaging=2"),
    )
    yield from running.served()


async def test_approved_rollout_replaces_messaging_on_the_running_platform_without_a_failed_send(
    upgrading: RunningPlatform,
) -> None:
    platform = upgrading
    operators = OperatorTokens()
    await operators.publish_on_platform(platform.data_dir)
    for user in ("pat", "olga", "oscar"):
        operators.save_cli_login(platform.data_dir, user)
    created = await cli(platform, "--as", "pat", "patch", "key", "create", "messaging")
    assert "messaging releases are signed by key" in created
    old_instances = [i["instance_id"] for i in platform.service("messaging")["instances"]]  # type: ignore[attr-defined]
    assert len(old_instances) == 2

    client = platform.client()
    channel_id = await sender_channel(client, "carol", "upgrades")
    async with sending(client, channel_id) as traffic:
        rollout_id = await roll_out(platform, "messaging", NEW_VERSION, MESSAGING_SOURCE)
        status = await rollout_ended(platform, rollout_id)
        assert "state: done" in status, status
        sent_during_rollout = traffic.acknowledged

    print(f"\nacknowledged sends: {traffic.acknowledged}; failed: {len(traffic.failures)}")
    assert traffic.failures == []
    assert sent_during_rollout > 0
    # `parley up` told the roll-out as it went: each step, each verdict with its figures, the end.
    told = [line for line in platform.output().splitlines() if f"roll-out {rollout_id} " in line]
    for share in (10, 50, 100):  # each phase of the canary gated, its share of callers raised
        assert any(f"canary: gate step 0 at {share}% passed (over " in line and " calls, " in line for line in told), (
            told
        )
    drained = [line for line in told if line.endswith(" drained")]
    assert sorted(old for old in old_instances if any(f" {old} drained" in line for line in drained)) == sorted(
        old_instances
    ), told
    assert told[-1].endswith(": done"), told
    # The audit names the agent and host that did each step, to the millisecond.
    audit = await cli(platform, "patch", "status", rollout_id, "--audit")
    started = next(line for line in audit.splitlines() if "InstanceStarted" in line)
    assert "node-agent@" in started
    assert re.search(r"\d{2}:\d{2}:\d{2}\.\d{3} UTC", started), started

    async def messaging_state() -> dict[str, object] | None:
        service = platform.service("messaging")
        return service if service["version"] == NEW_VERSION else None

    service = await eventually(messaging_state, "platform.json to show the new messaging", 30)
    instances = service["instances"]
    assert isinstance(instances, list)
    assert [i["version"] for i in instances] == [NEW_VERSION, NEW_VERSION]
    assert not {i["instance_id"] for i in instances} & set(old_instances)
    # The fleet view is what the instance itself reports: the installed wheel's own version.
    new_instances = {i["instance_id"] for i in instances}

    async def both_serving() -> bool | None:
        out = (await asyncio.to_thread(platform.cli, "fleet", check=False)).stdout
        rows = [line.split() for line in out.splitlines()]
        return {r[2] for r in rows if r[:2] == ["messaging", NEW_VERSION] and "SERVING" in r} == new_instances or None

    await eventually(both_serving, "the fleet to show both messaging 0.2.0 instances", 60)

    # The replaced instance stopped on purpose: it leaves the fleet view (no NOT_SERVING, no STALE row).
    async def old_instance_gone() -> bool | None:
        out = (await asyncio.to_thread(platform.cli, "fleet", check=False)).stdout
        return (not any(old in out for old in old_instances) and instances[0]["instance_id"] in out) or None

    await eventually(old_instance_gone, "the replaced instance to leave `parley fleet`", 60)
    status = await cli(platform, "status")
    messaging_line = next(line for line in status.splitlines() if line.startswith("messaging "))
    assert NEW_VERSION in messaging_line.split(), status

    async def archived() -> int | None:
        count = await history_count(client, channel_id)
        return count if count >= traffic.acknowledged else None

    assert await eventually(archived, "every acknowledged message in history", 120) == traffic.acknowledged
    await client.close()

    # Ctrl-C and `make run` again: the platform starts the version it ended on.
    assert platform.stop() == 0
    platform.start()
    assert platform.service("messaging")["version"] == NEW_VERSION
    await eventually(lambda: _fleet_row(platform, "messaging", NEW_VERSION), "messaging 0.2.0 after a restart", 60)


async def _fleet_row(platform: RunningPlatform, service: str, version: str) -> str | None:
    """The `parley fleet` line of a SERVING instance of `service` at `version`, if there is one."""
    out = (await asyncio.to_thread(platform.cli, "fleet", check=False)).stdout
    return next(
        (line for line in out.splitlines() if line.split()[:2] == [service, version] and "SERVING" in line), None
    )
