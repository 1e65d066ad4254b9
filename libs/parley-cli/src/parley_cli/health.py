"""Health checks of running services (the node agent's own, so `parley status` sees what the
agent sees) and of the platform's nats-server nodes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import nats.errors

from parley_core.nats_connect import NatsUnreachable, connect_nats_once
from parley_core.natsconf import platform_nats_password
from parley_core.topology import PLATFORM_USER

if TYPE_CHECKING:
    from parley_core.pki import Pki

__all__ = ["check_broker", "check_health"]

BROKER_CHECK_S = 2.0


async def check_health(pki: Pki, *, service: str, address: str) -> str:
    """The node agent's check. Imported here, not at the top: the parley_agent package loads the
    whole agent (TUF, the installer), which every other `parley` command would pay for."""
    from parley_agent.health import check_health as agent_check

    return await agent_check(pki, service=service, address=address)


async def check_broker(data_dir: Path, *, url: str, ca_cert: Path) -> str:
    """SERVING when the node takes a connection and answers a JetStream request, DOWN when
    nobody answers on its address, NOT_SERVING when it answers without JetStream (a cluster
    node still catching up or without a leader)."""
    try:
        nc = await connect_nats_once(
            url=url,
            user=PLATFORM_USER,
            password=platform_nats_password(data_dir),
            ca_cert=ca_cert,
            name="parley-status",
            timeout_s=BROKER_CHECK_S,
        )
    except (NatsUnreachable, nats.errors.Error, OSError):
        return "DOWN"
    try:
        await nc.jetstream(timeout=BROKER_CHECK_S).account_info()
    except (nats.errors.Error, TimeoutError):
        return "NOT_SERVING"
    finally:
        await nc.close()
    return "SERVING"
