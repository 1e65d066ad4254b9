"""How a gRPC call ended, as a value a test can compare: a refusal is what many tests expect."""

from __future__ import annotations

from collections.abc import Awaitable

import grpc

from parley_client.errors import ParleyError

__all__ = ["refusal", "status_and_details", "status_code"]


async def status_and_details(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    """The status a call ended with and its message; (OK, "") when it succeeded."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def refusal(call: Awaitable[object]) -> ParleyError:
    """The error a client call through the SDK was refused with; a call that succeeds fails the test."""
    try:
        await call
    except ParleyError as error:
        return error
    raise AssertionError("the call succeeded; it was to be refused")


async def status_code(call: Awaitable[object]) -> grpc.StatusCode:
    """The status a call ended with, for tests that check no message."""
    code, _ = await status_and_details(call)
    return code
