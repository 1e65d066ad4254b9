"""Health checks of running service instances over mutual TLS, as the platform identity.

The agent waits on them before it puts an instance behind its front door; `parley status` and the
roll-out test harness ask the same way.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2

from parley_core.grpc_channel import secure_channel
from parley_core.pki import Pki
from parley_core.topology import PLATFORM_USER


async def check_health(pki: Pki, *, service: str, address: str, timeout: float = 2.0) -> str:
    """SERVING, NOT_SERVING, or UNREACHABLE when nothing answers."""
    channel = secure_channel(pki, identity=PLATFORM_USER, address=address, peer=service)
    try:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        response = await check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return "UNREACHABLE"
        return f"ERROR ({exc.code().name})"
    finally:
        await channel.close()


async def is_serving(pki: Pki, *, service: str, address: str) -> bool:
    return await check_health(pki, service=service, address=address) == "SERVING"
