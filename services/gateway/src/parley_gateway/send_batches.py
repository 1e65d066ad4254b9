"""Clients' sends reach messaging in batches: a send that finds no call to messaging in flight
goes at once, alone (PostMessage, as any forwarded call); sends that arrive while a call is in
flight wait and go together in one PostMessages call as soon as it returns (no timer, so no added
latency when idle). One call then carries many sends, where each cost a gRPC call of its own.
Which go when is parley_gateway.domain.sending's decision; this module makes the calls.

Each send keeps what its own call carried (parley_gateway.forwarding): the client's token (which
messaging checks item by item), trace context and remaining deadline; and it gets its own
outcome, answered to its client as a forwarded PostMessage's would be. A send with an
idempotency key that failed in a way another instance may not is sent again on the stable one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from parley.messaging.v1 import messaging_pb2

from parley_core import telemetry
from parley_core.post_batch_limits import POST_BATCH_MAX_BYTES, POST_BATCH_MAX_ITEMS
from parley_core.tokens import bearer_token
from parley_core.trace_hops import TRACEPARENT, TRACESTATE
from parley_gateway.domain.sending import SendQueue
from parley_gateway.forwarding import REPEATABLE, Context, answer_failure, outcome_unknown, time_left

log = logging.getLogger(__name__)

STATUS_OF = {code.value[0]: code for code in grpc.StatusCode}

PostMany = grpc.aio.UnaryUnaryMultiCallable[messaging_pb2.PostMessagesRequest, messaging_pb2.PostMessagesResponse]
# One send forwarded by itself (forwarding.forward of PostMessage): the client's call aborted on failure.
PostAlone = Callable[[messaging_pb2.PostMessageRequest, Context], Awaitable[messaging_pb2.ChatMessage]]


@dataclass
class WaitingSend:
    item: messaging_pb2.PostItem
    deadline: float  # event-loop time
    answer: asyncio.Future[messaging_pb2.PostOutcome | None]
    size: int = 0  # bytes of the item

    def __post_init__(self) -> None:
        self.size = self.item.ByteSize()

    @property
    def repeatable(self) -> bool:
        return bool(self.item.request.idempotency_key)


def _item(request: messaging_pb2.PostMessageRequest, context: Context) -> messaging_pb2.PostItem:
    """What a forwarded PostMessage's metadata would carry that messaging reads: the token and the
    trace (the client's address only reaches auth, which a post does not call)."""
    token = bearer_token(context)  # the one token the gateway checked (a call carrying two is refused)
    trace = telemetry.current_trace_headers()  # the client's call's, with an exporter or without
    return messaging_pb2.PostItem(
        request=request,
        authorization=f"Bearer {token}" if token else "",
        traceparent=trace.get(TRACEPARENT, ""),
        tracestate=trace.get(TRACESTATE, ""),
    )


def _sent_again(outcome: messaging_pb2.PostOutcome | None) -> bool:
    """A failure another instance may not have (forwarding.REPEATABLE), and no write that may have landed."""
    return outcome is not None and STATUS_OF.get(outcome.code) in REPEATABLE and not outcome.outcome_unknown


class SendBatches:
    """One send alone, messaging's PostMessages, and the stable instance's PostMessages for sends
    made again (None: no stable door)."""

    def __init__(
        self,
        alone: PostAlone,
        post: PostMany,
        stable: PostMany | None,
        *,
        batch_max: int = POST_BATCH_MAX_ITEMS,
        max_bytes: int = POST_BATCH_MAX_BYTES,
    ) -> None:
        self._alone = alone
        self._post = post
        self._stable = stable
        self._queue: SendQueue[WaitingSend] = SendQueue(max_items=batch_max, max_bytes=max_bytes)
        self._calls: set[asyncio.Task[None]] = set()

    async def send(self, request: messaging_pb2.PostMessageRequest, context: Context) -> messaging_pb2.ChatMessage:
        """The posted message, or the client's call aborted with the send's own failure."""
        queue = self._queue
        if queue.go_alone():  # idle: at once, as today's one call
            try:
                return await self._alone(request, context)
            finally:
                queue.landed()
                self._send_due()
        loop = asyncio.get_running_loop()
        waiting = WaitingSend(_item(request, context), loop.time() + time_left(context), loop.create_future())
        queue.waiting.append(waiting)
        self._send_due()
        outcome = await waiting.answer
        if outcome is None:  # messaging takes no batches (an instance of an earlier version)
            return await self._alone(request, context)
        if outcome.code != grpc.StatusCode.OK.value[0]:
            code = STATUS_OF.get(outcome.code, grpc.StatusCode.UNKNOWN)
            await answer_failure(context, code, outcome.details, unknown=outcome.outcome_unknown)
        return outcome.message

    def _send_due(self) -> None:
        """Send what the queue says is due: what waits if no call is in flight, and every full batch."""
        queue = self._queue
        queue.waiting = [w for w in queue.waiting if not w.answer.done()]  # callers gone (deadline, cancel)
        while (batch := queue.next_call()) is not None:
            call = asyncio.create_task(self._send_batch(batch), name="post-messages")
            self._calls.add(call)
            call.add_done_callback(self._calls.discard)

    async def _send_batch(self, batch: list[WaitingSend]) -> None:
        try:
            outcomes = await self._call(self._post, batch)
            again = [i for i, w in enumerate(batch) if w.repeatable and _sent_again(outcomes[i])]
            if again and self._stable is not None:
                log.info("sent again on a stable instance", extra={"sends": len(again)})
                for i, outcome in zip(again, await self._call(self._stable, [batch[i] for i in again]), strict=True):
                    outcomes[i] = outcome
            for waiting, outcome in zip(batch, outcomes, strict=True):
                if not waiting.answer.done():
                    waiting.answer.set_result(outcome)
        except BaseException as exc:
            for waiting in batch:
                if waiting.answer.done():
                    continue
                if isinstance(exc, Exception):
                    waiting.answer.set_exception(exc)
                else:  # the gateway is stopping
                    waiting.answer.cancel()
            raise
        finally:
            self._queue.landed()
            self._send_due()

    @staticmethod
    async def _call(method: PostMany, batch: list[WaitingSend]) -> list[messaging_pb2.PostOutcome | None]:
        """One PostMessages call: each item's outcome, the call's own failure as each one's, or
        None for each where messaging does not implement it."""
        now = asyncio.get_running_loop().time()
        for waiting in batch:  # what is left of each client's deadline, for messaging to keep to
            waiting.item.timeout_ms = max(1, round((waiting.deadline - now) * 1000))
        request = messaging_pb2.PostMessagesRequest(items=[w.item for w in batch])
        try:
            response = await method(request, timeout=max(w.deadline for w in batch) - now)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return [None] * len(batch)
            failed = messaging_pb2.PostOutcome(
                code=exc.code().value[0], details=exc.details() or "", outcome_unknown=outcome_unknown(exc)
            )
            return [failed] * len(batch)
        if len(response.outcomes) != len(batch):
            raise RuntimeError(f"messaging answered {len(response.outcomes)} outcomes for {len(batch)} sends")
        return list(response.outcomes)
