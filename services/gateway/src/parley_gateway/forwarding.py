"""How the gateway calls an internal service on behalf of a client: the client's token, its
address, the trace context and its remaining deadline go along; an internal failure reaches the
client without its internal detail.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from parley_core import telemetry
from parley_core.errors import OUTCOME_METADATA, OUTCOME_UNKNOWN, OUTCOME_UNKNOWN_MESSAGE
from parley_core.sources import SOURCE_METADATA, client_address
from parley_core.tokens import bearer_token

log = logging.getLogger(__name__)

DEFAULT_DEADLINE_S = 10.0

Context = grpc.aio.ServicerContext[Any, Any]
Req = TypeVar("Req")
Resp = TypeVar("Resp")


@dataclass(frozen=True)
class Forwarded:
    """Metadata and deadline for an internal call made on behalf of one client call."""

    metadata: tuple[tuple[str, str | bytes], ...]
    timeout: float

    @classmethod
    def of(cls, context: Context) -> Forwarded:
        # Exactly the token the gateway checked (a call with two `authorization` headers is refused).
        token = bearer_token(context)
        metadata: tuple[tuple[str, str | bytes], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        # The client's real address (no proxy in front of the gateway), for auth's lockouts,
        # registration budgets and security events; any such metadata from the client is dropped.
        metadata = (*metadata, (SOURCE_METADATA, client_address(context.peer())))
        # The gateway's channels carry no interceptor (see GatewayApp.start): the trace goes on here.
        metadata = (*metadata, *telemetry.trace_metadata())
        return cls(metadata, time_left(context))


def time_left(context: Context) -> float:
    """The time an internal call made for this client call may take: what is left of the client's
    deadline, at most a minute (DEFAULT_DEADLINE_S without one)."""
    remaining = context.time_remaining()
    return DEFAULT_DEADLINE_S if remaining is None else max(0.0, min(remaining, 60.0))


# Internal failures a client can act on only by retrying; their details (addresses, internal
# errors) stay in our logs.
HIDDEN_DETAIL = {
    # A call cut off in flight may have made its change: the retry a client is told to make is the same call.
    grpc.StatusCode.UNAVAILABLE: (
        "the service is briefly unavailable; retry shortly (a send with the same idempotency key)"
    ),
    grpc.StatusCode.DEADLINE_EXCEEDED: (
        "the deadline passed before the platform answered, so a change may or may not have been made; "
        "retry with a longer one (a send with the same idempotency key)"
    ),
    grpc.StatusCode.UNKNOWN: "internal error",
    grpc.StatusCode.DATA_LOSS: "internal error",
    grpc.StatusCode.UNIMPLEMENTED: "this call is not available on the platform yet",
}


def outcome_unknown(exc: grpc.aio.AioRpcError) -> bool:
    return exc.code() == grpc.StatusCode.UNAVAILABLE and any(
        key == OUTCOME_METADATA and value == OUTCOME_UNKNOWN for key, value in exc.trailing_metadata() or ()
    )


# Failures that a second instance may not have: the instance's own (a broken canary's INTERNAL or
# UNKNOWN) or its going away (UNAVAILABLE).
REPEATABLE = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE})


async def forward(
    method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
    request: Req,
    context: Context,
    *,
    again: grpc.aio.UnaryUnaryMultiCallable[Req, Resp] | None = None,
) -> Resp:
    """Call an internal service on behalf of the client: its token, its remaining deadline.

    `again`: the same call on an instance no roll-out is trying out, given only for calls safe to
    repeat (reads, and writes carrying an idempotency key, which the service answers with the
    first call's result); a repeatable failure is then sent there once, so a broken canary's
    failures never reach the client.
    """
    fwd = Forwarded.of(context)
    try:
        try:
            return await method(request, metadata=fwd.metadata, timeout=fwd.timeout)
        except grpc.aio.AioRpcError as first:
            # An append the event log did not answer is the platform's trouble, not the instance's:
            # the client's own retries with the key handle it (and a second try would wait as long).
            if again is None or first.code() not in REPEATABLE or outcome_unknown(first):
                raise
            log.info("sent again on a stable instance", extra={"code": first.code().name, "detail": first.details()})
            return await again(request, metadata=fwd.metadata, timeout=Forwarded.of(context).timeout)
    except grpc.aio.AioRpcError as exc:
        unknown = outcome_unknown(exc)
        if not unknown and exc.code() not in HIDDEN_DETAIL:
            raise  # a refusal of the client's request: its message is meant for the client
        await answer_failure(context, exc.code(), exc.details() or "", unknown=unknown)
        raise  # abort raises; this keeps type checkers informed


async def answer_failure(context: Context, code: grpc.StatusCode, details: str, *, unknown: bool) -> None:
    """End the client's call with an internal call's failure (aborts): a refusal's own message, an
    internal failure's public words, a write of unknown outcome as the service put it."""
    if unknown:
        # A write that may or may not have landed: the service's words (retry with the same
        # key) and its marker, which the SDK retries on, reach the client as they are.
        context.set_trailing_metadata(((OUTCOME_METADATA, OUTCOME_UNKNOWN),))
        await context.abort(grpc.StatusCode.UNAVAILABLE, details or OUTCOME_UNKNOWN_MESSAGE)
    if (public := HIDDEN_DETAIL.get(code)) is not None:
        log.warning("internal call failed", extra={"code": code.name, "detail": details})
        await context.abort(code, public)
    await context.abort(code, details or code.name)
