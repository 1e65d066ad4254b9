"""An instance's heartbeats: what it runs and how it fares, every PARLEY_HEARTBEAT_SECONDS, for the
registry's fleet view (and its roll-out gates)."""

from __future__ import annotations

import functools
import logging

from google.protobuf.timestamp_pb2 import Timestamp
from parley.fleet.v1.fleet_pb2 import Distribution, Figure, InstanceHeartbeat

from parley_core.inventory import running_distributions
from parley_core.jobs import PeriodicJob, every
from parley_core.run_context import RunContext
from parley_core.topology import heartbeat_subject

log = logging.getLogger(__name__)


@functools.cache
def _distributions(root: str) -> list[Distribution]:
    """What an instance runs does not change while it runs: read once."""
    return running_distributions(root)


async def send_heartbeat(ctx: RunContext, health: str) -> None:
    """One heartbeat: SERVING, NOT_SERVING (draining), or STOPPED, the last word of an instance
    that stopped on purpose (it leaves the fleet view; one that falls silent shows as stale)."""
    sent = Timestamp()
    sent.GetCurrentTime()
    beat = InstanceHeartbeat(
        service=ctx.service,
        version=ctx.version,
        instance_id=ctx.settings.instance_id,
        host=ctx.settings.host_name,
        health=health,
        distributions=_distributions(f"parley-{ctx.service}"),
        sent_at=sent,
        requests_total=ctx.stats.requests,
        errors_total=ctx.stats.errors,
        p99_latency_ms=ctx.stats.take_p99_ms(),
        address=ctx.address,
        latency_buckets=ctx.stats.latency_buckets,
        figures=[Figure(name=f.name, labels=f.labels, value=f.value) for f in ctx.metrics.heartbeat_figures()],
    )
    try:
        await ctx.bus.nc.publish(heartbeat_subject(ctx.service, ctx.settings.instance_id), beat.SerializeToString())
    except Exception as exc:  # a missed heartbeat is only a late one
        log.warning("heartbeat not sent: %s", exc)


def heartbeat_job(ctx: RunContext) -> PeriodicJob:
    """SERVING every interval while the instance serves (NOT_SERVING once a projection of it halted);
    the runner sends the draining and stopping words itself once the job is stopped."""

    async def beat() -> None:
        await send_heartbeat(ctx, "SERVING" if ctx.bus.halted is None else "NOT_SERVING")

    # A beat is one publish (its failure is logged in send_heartbeat): cut short at a stop.
    return every(ctx.settings.heartbeat_seconds, beat, name="heartbeats", grace=0.0)
