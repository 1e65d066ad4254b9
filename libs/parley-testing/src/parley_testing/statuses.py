"""How a call ends, as a value a test compares: what a service answers to a call it must refuse."""

from __future__ import annotations

from collections.abc import Awaitable

import grpc

from parley_client.errors import ParleyError

__all__ = ["code_of", "refusal", "status_code"]


async def code_of(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    """The status code and details a raw gRPC `call` ends with; (OK, "") when it succeeds."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def status_code(call: Awaitable[object]) -> grpc.StatusCode:
    """The status code alone, for tests that check no message."""
    code, _ = await code_of(call)
    return code


async def refusal(call: Awaitable[object]) -> ParleyError:
    """The error a call through the SDK was refused with; a call that succeeds fails the test."""
    try:
        await call
    except ParleyError as error:
        return error
    raise AssertionError("the call succeeded; it was to be refused")
