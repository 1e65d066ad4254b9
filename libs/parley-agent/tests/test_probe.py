"""The agent's prober on a real platform (parley_testing.stack: real NATS, real gRPC servers):
the calls it makes on a canary are counted where the gate's heartbeats read them."""

from __future__ import annotations

from pathlib import Path

import pytest

from parley_agent.probe import Prober
from parley_core.config import PEER_ADDRESS_ENV
from parley_testing.stack import Stack

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("service", ["storage", "auth"])
async def test_a_canary_serves_the_probers_reads_and_counts_them_for_its_gate(
    service: str, stack: Stack, tmp_path: Path
) -> None:
    """Sends reach storage as events, never as calls, and logins are few: on a platform whose
    users only send, the prober's reads are a storage or auth canary's only evidence (0 calls
    failed every such roll-out for too little evidence)."""
    prober = Prober(
        pki=stack.pki,
        environment={
            PEER_ADDRESS_ENV["auth"]: f"127.0.0.1:{stack.ports['auth']}",
            PEER_ADDRESS_ENV["messaging"]: f"127.0.0.1:{stack.ports['messaging']}",
        },
        state_file=tmp_path / "probe.json",
        host="test-host",
    )
    address = f"127.0.0.1:{stack.ports[service]}"
    ctx = stack.apps[service].ctx
    assert ctx is not None
    # The first makes the prober's account and channel (messaging asks storage's archive once then).
    assert await prober.transaction(service, address)
    before = (ctx.stats.requests, ctx.stats.errors)
    assert [await prober.transaction(service, address) for _ in range(5)] == [True] * 5
    # What the instance's heartbeats report as requests_total and errors_total, the gate's figures.
    assert (ctx.stats.requests - before[0], ctx.stats.errors - before[1]) == (5, 0)
