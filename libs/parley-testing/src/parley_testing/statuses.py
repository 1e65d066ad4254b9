"""The gRPC status a raw call ends with: how tests check what a service answers to a call it must refuse."""

from __future__ import annotations

from collections.abc import Awaitable

import grpc

__all__ = ["code_of"]


async def code_of(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    """The status code and details `call` ends with; (OK, "") when it succeeds."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""
