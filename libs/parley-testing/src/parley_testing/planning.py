"""Releases and roll-outs in tests: a publisher's key, a plan on a platform just started."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from parley.patch.v1 import patch_pb2, patch_pb2_grpc
from securesystemslib.signer import CryptoSigner

from parley_cli.publishing import public_pem
from parley_testing.waiting import eventually

__all__ = ["delegated_publisher", "plan_once_heard"]


async def delegated_publisher(
    registry: patch_pb2_grpc.PatchServiceAsyncStub,
    service: str,
    *,
    metadata: Sequence[tuple[str, str]],
    timeout: float,
) -> CryptoSigner:
    """A new publisher key for `service`: the registry delegates its releases to the public half."""
    signer = CryptoSigner.generate_ed25519()
    delegate = patch_pb2.SetPublisherKeyRequest(service=service, public_key_pem=public_pem(signer))
    await registry.SetPublisherKey(delegate, metadata=metadata, timeout=timeout)
    return signer


async def plan_once_heard(
    registry: patch_pb2_grpc.PatchServiceAsyncStub,
    request: patch_pb2.PlanRolloutRequest,
    *,
    metadata: Sequence[tuple[str, str]],
    timeout: float,
    what: str,
) -> patch_pb2.Rollout:
    """`request` planned as soon as the registry knows a running instance of the service: a
    fresh instance's first heartbeat may not have reached it yet."""

    async def plan() -> patch_pb2.Rollout | None:
        try:
            return await registry.PlanRollout(request, metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            if "no running instance" in (error.details() or ""):
                return None
            raise

    return await eventually(plan, what, timeout)
