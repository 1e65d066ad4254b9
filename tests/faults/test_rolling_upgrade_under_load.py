"""Messaging upgraded through the patch registry and the node agent while Locust loads the gateway.

Locust runs headless as its own process (loadtests/locustfile.py: register, log in, join
channels, hold a live stream, send, read history, react, edit) against the gateway on loopback.
Once every user is up and sending, release 0.2.0 of messaging is published, planned and
approved; the agent replaces both instances one at a time behind its front door. The run must
show zero failed requests, and every send Locust saw acknowledged must be in history exactly
once. p99 of the calls during the roll-out is reported beside p99 before it (a figure, not an
assertion: the machine is shared).

The short version runs under `make faults`; `make upgrade-load` runs it with more users.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest
from locust_run import LocustRun
from parley_load.request_log import LoggedRequest
from workload import publish_figures

from parley_cli.wheels import build_wheel
from parley_client import ParleyClient
from parley_core.pki import Pki
from parley_testing.nats import NatsTestServer
from parley_testing.rollout_platform import agent_platform
from parley_testing.waiting import eventually, until

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1800)]

MESSAGING_SOURCE = Path(__file__).resolve().parents[2] / "services" / "messaging"
USERS = int(os.environ.get("PARLEY_UPGRADE_USERS", "8"))
SPAWN_RATE = float(os.environ.get("PARLEY_UPGRADE_SPAWN_RATE", "4"))
# Sends acknowledged in each phase, so each p99 rests on enough calls.
SENDS_BEFORE = int(os.environ.get("PARLEY_UPGRADE_SENDS_BEFORE", "100"))
SENDS_AFTER = 20
ROLLOUT_TIMEOUT_S = 900.0
# Events of the live stream, not calls: their "response time" is a delivery latency or a
# stream's lifetime, so they are kept out of the calls' p99.
STREAM_EVENTS = ("Deliver (send-to-deliver)", "Subscribe (ready)", "Subscribe (stream)")


def sends(requests: Iterable[LoggedRequest], since: float = 0.0) -> list[LoggedRequest]:
    return [r for r in requests if r.name == "SendMessage" and r.error is None and r.started_at >= since]


def p99(values: list[float]) -> float | None:
    """Nearest-rank 99th percentile, in ms."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)], 1)


def phase_figures(requests: list[LoggedRequest], start: float, end: float) -> dict[str, object]:
    inside = [r for r in requests if start <= r.started_at < end]
    calls = [r for r in inside if r.name not in STREAM_EVENTS]
    return {
        "seconds": round(end - start, 1),
        "calls": len(calls),
        "calls_p99_ms": p99([r.ms for r in calls]),
        "send_p99_ms": p99([r.ms for r in calls if r.name == "SendMessage"]),
        "deliver_p99_ms": p99([r.ms for r in inside if r.name == "Deliver (send-to-deliver)"]),
        "by_call": dict(Counter(r.name for r in calls)),
    }


async def archived_ids(auditor: ParleyClient, channel_ids: set[str]) -> dict[str, list[tuple[int, str]]]:
    """Each channel's whole history as (channel_seq, message_id), oldest first."""
    out: dict[str, list[tuple[int, str]]] = {}
    for channel_id in channel_ids:
        messages: list[tuple[int, str]] = []
        after = 0
        while True:
            page = await auditor.history(channel_id, after_seq=after, limit=500)
            messages.extend((m.channel_seq, m.message_id) for m in page.messages)
            if not page.has_more:
                break
            after = messages[-1][0]
        out[channel_id] = messages
    return out


async def test_messaging_rolled_out_under_locust_load_fails_no_request_and_loses_nothing(
    nats_server: NatsTestServer, pki: Pki, tmp_path: Path
) -> None:
    wheel = await asyncio.to_thread(build_wheel, MESSAGING_SOURCE, "0.2.0", tmp_path / "wheels")
    async with agent_platform(nats_server, pki, tmp_path) as platform:
        platform.start_agent()
        load = LocustRun.start(
            gateway_address=platform.gateway_address,
            ca_cert=pki.ca_cert,
            users=USERS,
            spawn_rate=SPAWN_RATE,
            # `make upgrade-load` keeps Locust's CSV and HTML report and the request log.
            folder=Path(os.environ.get("PARLEY_LOAD_REPORTS", tmp_path / "locust")).resolve(),
        )
        try:
            await until(
                lambda: load.running() and sum(r.name == "Subscribe (ready)" for r in load.requests()) >= USERS,
                what=f"all {USERS} Locust users logged in with a live stream",
                timeout=300,
                interval=0.5,
            )
            steady_from = time.time()
            await until(
                lambda: load.running() and len(sends(load.requests(), steady_from)) >= SENDS_BEFORE,
                what=f"{SENDS_BEFORE} sends acknowledged before the roll-out",
                timeout=600,
                interval=0.5,
            )
            await platform.publish(wheel, "0.2.0")
            rollout = await platform.plan("0.2.0")
            rollout_from = time.time()
            await platform.approve(rollout)
            done = await platform.finished(rollout.rollout_id, ROLLOUT_TIMEOUT_S)
            rollout_until = time.time()
            assert done.state == "done", done.rollback_reason
            assert [s.gate for s in done.steps] == ["passed", "passed"]
            assert platform.managed_versions() == {"0.2.0"}
            # The new version serves the load too before the run ends.
            await until(
                lambda: load.running() and len(sends(load.requests(), rollout_until)) >= SENDS_AFTER,
                what=f"{SENDS_AFTER} sends acknowledged by the new version",
                timeout=300,
                interval=0.5,
            )
            after_until = time.time()
        finally:
            exit_code = await asyncio.to_thread(load.stop)

        requests = load.requests()
        failures = [r for r in requests if r.error is not None]
        acked = sends(requests)
        auditor = ParleyClient.connect(platform.gateway_address, ca_cert=pki.ca_pem())
        name = f"auditor-{uuid.uuid4().hex[:8]}"
        await auditor.register(name, "auditor-passphrase")
        await auditor.login(name, "auditor-passphrase")
        channels = {r.channel_id for r in acked}
        for channel_id in channels:
            await auditor.join_channel(channel_id)
        acked_ids = {r.message_id for r in acked}

        async def complete_archive() -> dict[str, list[tuple[int, str]]] | None:
            history = await archived_ids(auditor, channels)
            return history if acked_ids <= {mid for msgs in history.values() for _, mid in msgs} else None

        history = await eventually(complete_archive, "every acknowledged send in history", 120, interval=0.5)
        await auditor.close()

    in_history = Counter(mid for msgs in history.values() for _, mid in msgs)
    lost = acked_ids - set(in_history)
    duplicated = [mid for mid in acked_ids if in_history[mid] > 1]
    during = sends(requests, rollout_from)
    publish_figures(
        "rolling-upgrade-under-locust",
        {
            "users": USERS,
            "requests": len(requests),
            "failed": len(failures),
            "acknowledged": len(acked_ids),
            "acknowledged_during_rollout": sum(r.started_at < rollout_until for r in during),
            "archived": sum(in_history.values()),
            "lost": len(lost),
            "duplicated": len(duplicated),
            "rollout_s": round(rollout_until - rollout_from, 1),
            "before": phase_figures(requests, steady_from, rollout_from),
            "during": phase_figures(requests, rollout_from, rollout_until),
            "after": phase_figures(requests, rollout_until, after_until),
            "locust_exit_code": exit_code,
        },
    )
    assert failures == [], f"{len(failures)} failed requests, first: {failures[:5]}"
    assert exit_code == 0, load.output()[-3000:]
    assert any(r.started_at < rollout_until for r in during), "no send was acknowledged during the roll-out"
    assert not lost, f"acknowledged but not in history: {sorted(lost)[:10]}"
    assert not duplicated, f"in history more than once: {duplicated[:10]}"
    for channel_id, messages in history.items():
        seqs = [seq for seq, _ in messages]
        assert seqs == list(range(1, len(seqs) + 1)), f"{channel_id}: sequence numbers have gaps or repeats"
