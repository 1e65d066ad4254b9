"""gRPC side of the to-device relay (end-to-end encryption), and messaging's view of auth's directory.

Queued messages are events of one aggregate per recipient user (parley.msg.todevice.<user>),
appended with the same optimistic concurrency as channels. Which devices exist comes from
auth's events (AuthDirectory): a device removed in auth can neither send nor receive here,
and what was queued for it is dropped. A fetch after queue position N says the device holds
everything up to N (`ToDeviceFetched`), which then leaves the queue; what a sender may have
waiting undelivered is capped (MAX_UNDELIVERED_BYTES_PER_SENDER).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

import grpc
from parley.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from parley.messaging.v1.events_pb2 import ToDeviceFetched, ToDeviceSent

from parley_core.actor import Actor
from parley_core.envelope import NewEvent
from parley_core.errors import InvalidArgument, NotFound, PermissionDenied
from parley_core.event_log import EventLog
from parley_core.runner import RunContext
from parley_core.same_named import same_named
from parley_core.topology import to_device_subject
from parley_messaging.device_projection import DeviceRelay
from parley_messaging.devices import (
    MAX_TO_DEVICE_PER_CALL,
    QUEUED_FIELDS,
    SENDERS_FIELDS,
    QueuedMessage,
    ToDeviceQueue,
    check_ciphertext,
    require_device,
    require_own_device,
)

MAX_FETCH = 500
# A page stops before this many bytes of ciphertext (with one message at least), well under the
# 4 MiB a gRPC client takes by default: a hundred large messages would otherwise make a page no
# client can receive, and the device could never fetch past them.
MAX_FETCH_BYTES = 2 * 1024 * 1024
Context = grpc.aio.ServicerContext[Any, Any]


class Appender(Protocol):
    """What the messaging app lends this servicer: its context, its one way to change an
    aggregate (parley_core.event_log.EventLog.decide_and_append) and catching up with auth's stream."""

    @property
    def ctx(self) -> RunContext: ...

    @property
    def event_log(self) -> EventLog: ...

    async def settle_auth(self) -> None: ...


class DeviceKeyServicer(messaging_pb2_grpc.DeviceKeyServiceServicer):
    def __init__(self, app: Appender, relay: DeviceRelay) -> None:
        self._app = app
        self.relay = relay
        self.directory = relay.directory

    async def _fresh(self, check: Callable[[], object]) -> None:
        """Run a directory check; on a miss, catch up with auth's stream once and check again
        (a device published a moment ago may not have reached this projection yet)."""
        try:
            check()
        except (NotFound, PermissionDenied):
            await self._app.settle_auth()
            check()

    # --- commands ---------------------------------------------------------------------------

    async def SendToDevice(
        self, request: messaging_pb2.SendToDeviceRequest, context: Context
    ) -> messaging_pb2.SendToDeviceResponse:
        caller = self._app.ctx.tokens.caller(context)
        if len(request.messages) > MAX_TO_DEVICE_PER_CALL:
            raise InvalidArgument(f"send at most {MAX_TO_DEVICE_PER_CALL} to-device messages at once")
        for message in request.messages:

            def check(message: ToDeviceSent = message) -> None:
                sender_key = require_own_device(self.directory, caller.user_id, message.sender_device_id)
                if message.sender_identity_key != sender_key:
                    raise InvalidArgument("sender_identity_key is not the published identity key of the sending device")
                require_device(self.directory, message.recipient_user_id, message.recipient_device_id)

            await self._fresh(check)
            check_ciphertext(message.olm_type, message.ciphertext)
        self.relay.undelivered.check(caller.user_id, sum(len(m.ciphertext) for m in request.messages))
        for message in request.messages:
            recipient = message.recipient_user_id

            def decide(queue: ToDeviceQueue, message: ToDeviceSent = message) -> tuple[list[NewEvent], None]:
                sent = NewEvent(
                    aggregate_type="todevice",
                    aggregate_id=queue.user_id,
                    payload=ToDeviceSent(
                        **same_named(message, *SENDERS_FIELDS),
                        recipient_user_id=queue.user_id,
                        sender_user_id=caller.user_id,
                        queue_seq=queue.next_seq(message.recipient_device_id),
                    ),
                    actor=Actor.user(caller.user_id),
                )
                return [sent], None

            read = partial(self.relay.queue, recipient)
            await self._app.event_log.decide_and_append(to_device_subject(recipient), read, decide)
        return messaging_pb2.SendToDeviceResponse()

    async def FetchToDevice(
        self, request: messaging_pb2.FetchToDeviceRequest, context: Context
    ) -> messaging_pb2.FetchToDeviceResponse:
        caller = self._app.ctx.tokens.caller(context)
        if request.limit > MAX_FETCH:
            raise InvalidArgument(f"limit must be at most {MAX_FETCH} (0 means 100)")
        # A device removed at auth a moment ago gets nothing more: this projection catches up
        # with auth first (on a hit too, where _fresh would not).
        await self._app.settle_auth()
        require_own_device(self.directory, caller.user_id, request.device_id)
        device_id = request.device_id

        def decide(queue: ToDeviceQueue) -> tuple[list[NewEvent], None]:
            # What was handed out, at most: a device cannot wave away messages not yet sent to it.
            up_to = min(request.after_queue_seq, queue.sent.get(device_id, 0))
            if up_to <= queue.fetched.get(device_id, 0):
                return [], None
            fetched = ToDeviceFetched(
                recipient_user_id=queue.user_id, recipient_device_id=device_id, up_to_queue_seq=up_to
            )
            event = NewEvent(
                aggregate_type="todevice", aggregate_id=queue.user_id, payload=fetched, actor=Actor.user(caller.user_id)
            )
            return [event], None

        queue = self.relay.queue(caller.user_id)
        if request.after_queue_seq > queue.fetched.get(device_id, 0):
            queue, _ = await self._app.event_log.decide_and_append(
                to_device_subject(caller.user_id), partial(self.relay.queue, caller.user_id), decide
            )
        limit = request.limit or 100
        return messaging_pb2.FetchToDeviceResponse(
            messages=[
                ToDeviceSent(
                    recipient_user_id=caller.user_id,
                    recipient_device_id=request.device_id,
                    **same_named(m, *QUEUED_FIELDS),
                )
                for m in _page(queue.after(request.device_id, request.after_queue_seq, limit))
            ]
        )


def _page(messages: list[QueuedMessage]) -> list[QueuedMessage]:
    """The first messages of a page, up to MAX_FETCH_BYTES of ciphertext (one at least)."""
    size = 0
    for n, message in enumerate(messages):
        size += len(message.ciphertext)
        if size > MAX_FETCH_BYTES and n > 0:
            return messages[:n]
    return messages
