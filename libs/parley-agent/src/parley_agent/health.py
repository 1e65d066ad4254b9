"""Health checks of running service instances over mutual TLS, with the agent's certificate.

The agent waits on them before it puts an instance behind its front door; `parley status` and the
roll-out test harness ask the same way (parley_core.health_probe, which a pod's probe runs too).
"""

from __future__ import annotations

from parley_core import health_probe
from parley_core.pki import Pki, tooling_identity


async def check_health(pki: Pki, *, service: str, address: str, timeout: float = 2.0) -> str:
    """SERVING, NOT_SERVING, or UNREACHABLE when nothing answers."""
    return await health_probe.check_health(
        pki, identity=tooling_identity(pki.directory), service=service, address=address, timeout=timeout
    )


async def is_serving(pki: Pki, *, service: str, address: str) -> bool:
    return await check_health(pki, service=service, address=address) == health_probe.SERVING
