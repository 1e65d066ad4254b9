"""The platform's own figures over time (GetServiceHealth.platform, the console's Health page):
archive lag per stream, messages/s, live streams and failed logins per minute, computed from the
figures the heartbeats carry (InstanceHeartbeat.figures, the series marked `heartbeat=True`)."""

from __future__ import annotations

import grpc
import pytest
from parley.fleet.v1 import fleet_pb2, fleet_pb2_grpc

from parley_client import ParleyClient, ParleyError
from parley_core.metrics import ServiceMetrics
from parley_core.pki import Pki
from parley_patch_registry.fleet_view import FleetView
from parley_patch_registry.platform_health import platform_health
from parley_testing.stack import PASSWORD, TIMEOUT_S, Stack, bearer
from parley_testing.waiting import eventually

HEARTBEAT_S = "0.2"


def beat(service: str, instance: str, metrics: ServiceMetrics) -> fleet_pb2.InstanceHeartbeat:
    figures = [fleet_pb2.Figure(name=f.name, labels=f.labels, value=f.value) for f in metrics.heartbeat_figures()]
    return fleet_pb2.InstanceHeartbeat(service=service, instance_id=instance, health="SERVING", figures=figures)


def test_counters_are_rates_per_step_gauges_their_last_reading_summed_or_worst_across_instances() -> None:
    fleet = FleetView(stale_after_s=15.0)
    one, two = ServiceMetrics("messaging"), ServiceMetrics("messaging")
    posted = [m.counter("parley_messages_posted", "posted", heartbeat=True) for m in (one, two)]
    auth = ServiceMetrics("auth")
    records = auth.counter("parley_security_records", "records", ("kind",), zeroed=[("login_failed",)], heartbeat=True)
    gateways = [ServiceMetrics("gateway"), ServiceMetrics("gateway")]
    live = [g.gauge("parley_live_streams", "live", heartbeat=True) for g in gateways]
    storages = [ServiceMetrics("storage"), ServiceMetrics("storage")]
    lag = [s.gauge("parley_archive_lag_seconds", "lag", ("stream",), heartbeat=True) for s in storages]

    def beats(at: float) -> None:
        fleet.record(beat("messaging", "m-1", one), received_at=at)
        fleet.record(beat("messaging", "m-2", two), received_at=at)
        fleet.record(beat("auth", "a-1", auth), received_at=at)
        for n, metrics in enumerate(gateways):
            fleet.record(beat("gateway", f"g-{n}", metrics), received_at=at)
        for n, metrics in enumerate(storages):
            fleet.record(beat("storage", f"s-{n}", metrics), received_at=at)

    beats(100.0)
    # Step 1 (100..160 s): 90 messages over two instances, 3 failed logins (and a lockout, not counted).
    posted[0].inc(60)
    posted[1].inc(30)
    records.labels("login_failed").inc(3)
    records.labels("lockout").inc()
    live[0].set(4)
    live[1].set(2)
    lag[0].labels("MSG").set(0.5)
    lag[1].labels("MSG").set(2.0)
    lag[0].labels("SEC").set(0.0)
    beats(130.0)
    beats(160.0)
    # Step 2 (160..220 s): 30 messages, no failed login, one gateway's streams closed.
    posted[0].inc(30)
    live[0].set(0)
    lag[1].labels("MSG").set(0.0)
    beats(190.0)
    beats(220.0)

    found = platform_health(fleet, window_s=180.0, points=3, now_monotonic=220.0, now_wall=1_000_220.0)
    series = {(s.figure.figure, s.label): [step.value for step in s.steps] for s in found}
    assert [step.at for step in found[0].steps] == [1_000_100.0, 1_000_160.0, 1_000_220.0]
    # Step 0 (40..100 s) ends at the first beats: a gauge reads them, a counter has no step yet.
    assert series[("messages_per_second", "")] == [None, 90 / 60, 30 / 60]
    assert series[("login_failures_per_minute", "")] == [None, 3.0, 0.0]
    assert series[("live_streams", "")] == [0.0, 6.0, 2.0]
    assert series[("archive_lag_seconds", "MSG")] == [None, 2.0, 0.5]  # the worst storage's reading
    assert series[("archive_lag_seconds", "SEC")] == [None, 0.0, 0.0]
    assert {s.figure.unit for s in found} == {"s", "messages/s", "streams", "failures/min"}


def test_a_counter_first_heard_mid_step_counts_from_there_not_its_whole_past() -> None:
    fleet = FleetView(stale_after_s=15.0)
    metrics = ServiceMetrics("messaging")
    posted = metrics.counter("parley_messages_posted", "posted", heartbeat=True)
    posted.inc(1000)  # sent before the registry (re)started
    fleet.record(beat("messaging", "m-1", metrics), received_at=110.0)
    posted.inc(6)
    fleet.record(beat("messaging", "m-1", metrics), received_at=115.0)
    [messages] = platform_health(fleet, window_s=60.0, points=1, now_monotonic=120.0, now_wall=0.0)
    assert [step.value for step in messages.steps] == [6 / 60]


@pytest.fixture(autouse=True)
def fast_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_HEARTBEAT_SECONDS", HEARTBEAT_S)


def totals(health: fleet_pb2.GetServiceHealthResponse) -> dict[str, float]:
    """Each counted figure's total over the window (rate x step), each gauge's latest reading."""
    found: dict[str, float] = {}
    for series in health.platform:
        known = [p.value for p in series.points if p.known]
        if series.figure == "messages_per_second":
            found["messages"] = round(sum(known) * health.step_seconds, 6)
        elif series.figure == "login_failures_per_minute":
            found["failed logins"] = round(sum(known) * health.step_seconds / 60, 6)
        elif known:
            found[f"{series.figure} {series.label}".strip()] = known[-1]
    return found


@pytest.mark.asyncio
async def test_sends_failed_logins_and_live_streams_on_a_real_stack_reach_the_series(stack: Stack, pki: Pki) -> None:
    await stack.create_user("opal", "operator")
    await stack.create_user("mia", "member")
    operator = bearer((await stack.login("opal")).access_token)
    member = bearer((await stack.login("mia")).access_token)
    request = fleet_pb2.GetServiceHealthRequest(window_seconds=600, points=20)
    client = ParleyClient.connect(f"127.0.0.1:{stack.ports['gateway']}", ca_cert=pki.ca_pem())
    try:
        await client.login("mia", PASSWORD)
        channel = await client.create_channel("health")
        for n in range(5):
            await client.send(channel.channel_id, f"message {n}")
        await client.send(channel.channel_id, "once", idempotency_key="k-1")
        await client.send(channel.channel_id, "once", idempotency_key="k-1")  # a retry: not a new message
        stranger = ParleyClient.connect(f"127.0.0.1:{stack.ports['gateway']}", ca_cert=pki.ca_pem())
        try:
            for _ in range(2):
                with pytest.raises(ParleyError, match="UNAUTHENTICATED"):
                    await stranger.login("mia", "not-the-password-at-all")
        finally:
            await stranger.close()
        stream = client.subscribe([channel.channel_id])
        await stream.ready()
        try:

            async def counted() -> dict[str, float] | None:
                health = await stack.gateway().GetServiceHealth(request, metadata=operator, timeout=TIMEOUT_S)
                found = totals(health)
                wanted = found.get("messages") == 6 and found.get("failed logins") == 2
                return found if wanted and found.get("live_streams") == 1 else None

            found = await eventually(counted, "the sends, failed logins and the live stream in the heartbeats")
        finally:
            stream.cancel()
    finally:
        await client.close()
    # Storage's archive lag per stream is there too (caught up here: 0 s behind).
    assert {"archive_lag_seconds MSG", "archive_lag_seconds SEC"} <= set(found)
    # A member reads none of it, at the gateway nor at the registry itself.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.gateway().GetServiceHealth(request, metadata=member, timeout=TIMEOUT_S)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    registry = fleet_pb2_grpc.FleetServiceStub(stack.internal("patch-registry"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await registry.GetServiceHealth(request, metadata=member, timeout=TIMEOUT_S)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
