"""The interceptors every service's gRPC server runs: who may call, what they may call, and one
gRPC status per error (never a stack trace); and the per-method cache that builds the chain once.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import grpc
import nats.errors
import nats.js.errors

from parley_core.deadline import answering_within
from parley_core.error_status import status_for
from parley_core.errors import OUTCOME_METADATA, OUTCOME_UNKNOWN, DomainError, OutcomeUnknown
from parley_core.grpc_handlers import Deserializer, HandlerWrapper, replaced
from parley_core.ranges import check_ranges
from parley_core.rbac import METHOD_PERMISSIONS, TOKENLESS_METHODS
from parley_core.tokens import TokenVerifier, bearer_token

if TYPE_CHECKING:
    from parley_core.grpc_handlers import Continuation, Handler

log = logging.getLogger(__name__)


_AioBehaviour = Callable[[Any, "grpc.aio.ServicerContext[Any, Any]"], Any]
Authorize = Callable[[str, "grpc.aio.ServicerContext[Any, Any]"], None]
# The peers (certificate names) that may call a method: topology.grpc_callers for one service.
AllowedPeers = Callable[[str], tuple[str, ...]]


@dataclass(frozen=True)
class Undecodable:
    """Stands in for a request whose bytes are not the method's message: gRPC would answer UNKNOWN
    naming a Python exception; the handler answers INVALID_ARGUMENT in plain words instead."""

    method: str

    @property
    def problem(self) -> str:
        return f"the request is not a valid protobuf message of the type {self.method} takes"


def decoding(deserializer: Deserializer | None, method: str) -> Deserializer | None:
    """`deserializer`, returning Undecodable for bytes it cannot decode rather than raising."""
    if deserializer is None:
        return None

    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception:  # protobuf raises DecodeError, and others for some malformed input
            return Undecodable(method)

    return decode


def peer_names(context: grpc.aio.ServicerContext[Any, Any]) -> set[str]:
    return {n.decode() for n in context.auth_context().get("x509_common_name", [])}


def method_permission_check(tokens: TokenVerifier) -> Authorize:
    """Enforces rbac.METHOD_PERMISSIONS for every call, from this service's own projection.

    The platform identity (mutual TLS, operator tooling) may call PLATFORM_METHODS without a
    user token, a joined host's node agent NODE_AGENT_METHODS (rbac.TOKENLESS_METHODS); with a
    token, the user's permission is checked as for anyone.
    """

    def check(method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if method not in METHOD_PERMISSIONS:
            return
        permission = METHOD_PERMISSIONS[method]
        if permission is None:
            return
        if bearer_token(context) is None and any(method in TOKENLESS_METHODS.get(p, ()) for p in peer_names(context)):
            return
        tokens.authorize_call(context, permission, what=method.rsplit("/", 1)[-1])

    return check


EVENT_LOG_SILENT = (
    "the event log did not answer in time; if this call changes something, the change may or may not "
    "have been made: retry it (a send with the same idempotency key), which never makes it twice"
)


# The event log did not answer: a timeout (nats-py's is a TimeoutError too), a connection
# closed or lost, a stream without a leader. Not a bug of ours; other NATS errors are.
EVENT_LOG_UNANSWERED = (
    TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)


class FailureStatus(NamedTuple):
    code: grpc.StatusCode
    details: str
    outcome_unknown: bool  # UNAVAILABLE, and a write may have landed: retry it (the same key)


def failure_status(exc: BaseException, method: str) -> FailureStatus:
    """The one gRPC status a call (or one item of a batch call) that raised `exc` answers with."""
    if isinstance(exc, DomainError):
        return FailureStatus(status_for(exc), str(exc), isinstance(exc, OutcomeUnknown))
    if isinstance(exc, EVENT_LOG_UNANSWERED):
        # The event log did not answer (a read or a write): no fault of ours to hide behind
        # INTERNAL, and a write may have landed, so the caller is told to retry, not to give up.
        log.warning("event log did not answer in %s: %r", method, exc)
        return FailureStatus(grpc.StatusCode.UNAVAILABLE, EVENT_LOG_SILENT, True)
    if isinstance(exc, grpc.aio.AioRpcError):
        # A downstream refusal passes through with its own status and message.
        return FailureStatus(exc.code(), exc.details() or exc.code().name, False)
    ref = uuid.uuid4().hex[:12]
    log.error("unhandled error in %s (ref %s)", method, ref, exc_info=exc)
    return FailureStatus(grpc.StatusCode.INTERNAL, f"internal error (reference {ref})", False)


class CallerCheckAndErrors(HandlerWrapper):
    """Refuses peers not allowed to call this method and maps errors to one gRPC status each.

    Who may call is topology's one table (GRPC_CALLERS, narrowed per method by
    GRPC_METHOD_CALLERS), so no servicer checks the peer's certificate itself; None (the
    client-facing gateway) admits any peer.

    Domain errors keep their message; anything unexpected becomes INTERNAL with a reference
    that points to the log line, never a stack trace to the client. Requests that do not decode,
    or whose numbers or times are out of range (parley_core.ranges), are INVALID_ARGUMENT before
    any handler sees them.
    """

    def __init__(self, allowed_peers: AllowedPeers | None, authorize: Authorize | None = None) -> None:
        self._allowed = allowed_peers
        self._authorize = authorize

    def wrap(self, handler: Handler, method: str) -> Handler:
        open_to_all = self._allowed is None or method.startswith(("/grpc.health.v1.Health/", "/grpc.reflection."))
        allowed = () if self._allowed is None else self._allowed(method)
        authorize = self._authorize

        def check_peer(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
            if open_to_all:
                return None
            names = peer_names(context)
            if not names & set(allowed):
                who = sorted(names) or "without certificate"
                return f"peer {who} may not call {method} (its callers: {', '.join(allowed) or 'none'})"
            return None

        async def fail(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
            failed = failure_status(exc, method)
            if failed.outcome_unknown:
                context.set_trailing_metadata(((OUTCOME_METADATA, OUTCOME_UNKNOWN),))
            await context.abort(failed.code, failed.details)

        async def admit(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            """Refuses a peer not allowed here and a request that did not decode (aborts the call)."""
            if (problem := check_peer(context)) is not None:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, problem)
            if isinstance(request, Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.problem)

        def check_request(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            """The caller's permission and the request's numbers and times: a domain error each."""
            if authorize is not None:
                authorize(method, context)
            check_ranges(request)

        if handler.unary_unary is not None:
            # The stubs describe synchronous handlers; on a grpc.aio server they are coroutines.
            inner_unary = cast(_AioBehaviour, handler.unary_unary)

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                await admit(request, context)
                try:
                    check_request(request, context)
                    with answering_within(context.time_remaining()):
                        return await inner_unary(request, context)
                except (grpc.aio.AbortError, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    await fail(context, exc)

            return replaced(handler, unary, request_deserializer=decoding(handler.request_deserializer, method))
        if handler.unary_stream is not None:
            inner_stream = cast(_AioBehaviour, handler.unary_stream)

            async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                await admit(request, context)
                try:
                    check_request(request, context)
                    if inspect.iscoroutinefunction(inner_stream):
                        # Writes with context.write() and returns None, as grpc's Health.Watch does.
                        await inner_stream(request, context)
                    else:
                        async for item in inner_stream(request, context):
                            yield item
                except (grpc.aio.AbortError, asyncio.CancelledError, GeneratorExit):
                    raise
                except Exception as exc:
                    await fail(context, exc)

            return replaced(handler, stream, request_deserializer=decoding(handler.request_deserializer, method))
        return handler


class PerMethodHandlers(grpc.aio.ServerInterceptor):
    """Runs the interceptors once per method and keeps the handler they make.

    grpc.aio asks the interceptors for a handler on every call, and each builds its wrapper
    anew; every wrapper here depends on the method alone (the caller, metadata and request
    are read inside it, per call), so the chain is built on a method's first call only.
    """

    def __init__(self, interceptors: Sequence[grpc.aio.ServerInterceptor]) -> None:
        self._interceptors = tuple(interceptors)
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        method = handler_call_details.method
        if (handler := self._handlers.get(method)) is not None:
            return handler
        handler = await self._through(0, continuation, handler_call_details)
        if handler is not None:
            self._handlers[method] = handler
        return handler

    async def _through(
        self,
        index: int,
        continuation: Continuation,
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        if index == len(self._interceptors):
            return await continuation(details)

        async def following(d: grpc.HandlerCallDetails) -> Handler | None:
            return await self._through(index + 1, continuation, d)

        return await self._interceptors[index].intercept_service(following, details)
