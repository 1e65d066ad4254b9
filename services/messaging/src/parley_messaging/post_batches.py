"""The items of a PostMessages call (the gateway's waiting sends in one call): whose each one is,
checked from its own token, and the context it runs in; and what each answers.

Each item is checked as its own PostMessage call would be (the sender's token, its standing and
messages.send): the gateway's certificate makes the call, but posts as no one by itself.
"""

from __future__ import annotations

import contextlib

from parley.messaging.v1 import messaging_pb2

from parley_core import telemetry
from parley_core.deadline import answering_within
from parley_core.errors import ResourceExhausted, Unauthenticated
from parley_core.post_batch_limits import POST_BATCH_MAX_BYTES, POST_BATCH_MAX_ITEMS
from parley_core.rbac import Permission
from parley_core.server_interceptors import failure_status
from parley_core.tokens import Caller, TokenVerifier, bearer_of
from parley_core.trace_hops import TRACEPARENT, TRACESTATE

POST_MESSAGES = "/parley.messaging.v1.MessagingService/PostMessages"
NOT_LOGGED_IN = "missing `authorization: Bearer <token>` metadata; log in first"


def check_batch_size(request: messaging_pb2.PostMessagesRequest) -> None:
    """A call over what the gateway ever sends (post_batch_limits: items and bytes, counted as the
    gateway counts them) is refused whole: one turn of a channel's lock would hold it for all."""
    if len(request.items) > POST_BATCH_MAX_ITEMS:
        raise ResourceExhausted(
            f"PostMessages carries at most {POST_BATCH_MAX_ITEMS} items; this call has {len(request.items)}: "
            "send the rest in further calls"
        )
    size = sum(item.ByteSize() for item in request.items)
    if size > POST_BATCH_MAX_BYTES:
        raise ResourceExhausted(
            f"PostMessages carries at most {POST_BATCH_MAX_BYTES} bytes of items; this call has {size}: "
            "send the rest in further calls"
        )


def item_caller(tokens: TokenVerifier, item: messaging_pb2.PostItem) -> Caller:
    """The item's sender, from its own token, allowed to send (as the interceptor checks PostMessage)."""
    token = bearer_of(item.authorization)
    if token is None:
        raise Unauthenticated(NOT_LOGGED_IN)
    caller = tokens.verify(token)
    caller.require(Permission.MESSAGES_SEND, what="PostMessage")
    return caller


class ItemScope:
    """What an item runs in when its turn comes: its own trace, and its own deadline (what was left
    of it when the gateway sent it, counted from the call's arrival). Entered again when the item
    is decided again (a pipelined round's broken chain): a trace hop of its own each time."""

    def __init__(self, item: messaging_pb2.PostItem) -> None:
        self._trace = {TRACEPARENT: item.traceparent, TRACESTATE: item.tracestate} if item.traceparent else {}
        self._deadline = answering_within(item.timeout_ms / 1000) if item.timeout_ms else None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> None:
        self._stack.enter_context(telemetry.continued_from(self._trace, "PostMessages item"))
        if self._deadline is not None:
            self._stack.enter_context(self._deadline)

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def refused(exc: BaseException) -> messaging_pb2.PostOutcome:
    """The outcome of an item that raised `exc`: the status its own PostMessage call would have had."""
    failed = failure_status(exc, POST_MESSAGES)
    return messaging_pb2.PostOutcome(
        code=failed.code.value[0], details=failed.details, outcome_unknown=failed.outcome_unknown
    )
