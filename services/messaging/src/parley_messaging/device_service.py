"""gRPC side of the device key directory and the to-device relay (end-to-end encryption).

Translates requests into the events of two aggregates per user, its devices
(parley.msg.device.<user>) and its to-device queue (parley.msg.todevice.<user>), appended with
the same optimistic concurrency as channels, so a one-time key is handed out exactly once even
with several messaging instances.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

import grpc
from parley.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from parley.messaging.v1.events_pb2 import DeviceKeysPublished, OneTimeKey, OneTimeKeyClaimed, ToDeviceSent

from parley_core.bus import ConcurrencyConflict, ReceivedEvent
from parley_core.envelope import NewEvent, open_payload
from parley_core.errors import InvalidArgument, Unavailable
from parley_core.runner import RunContext
from parley_core.topology import device_subject, to_device_subject
from parley_messaging.devices import (
    MAX_TO_DEVICE_PER_CALL,
    Device,
    QueuedMessage,
    ToDeviceQueue,
    UserDevices,
    check_ciphertext,
    check_publish,
    next_one_time_key,
    require_own_device,
    validate_device_id,
    validate_key,
    validate_one_time_keys,
)

APPEND_ATTEMPTS = 5
MAX_USERS_PER_LIST = 100
MAX_FETCH = 500
Context = grpc.aio.ServicerContext[Any, Any]


class Appender(Protocol):
    """What the messaging app lends this servicer: its context, appends and catch-up."""

    @property
    def ctx(self) -> RunContext: ...

    async def append_to(self, subject: str, event: NewEvent, after: Any) -> None: ...

    async def settle(self, subject: str) -> None: ...


def device_proto(device: Device) -> messaging_pb2.DeviceKeys:
    return messaging_pb2.DeviceKeys(
        user_id=device.user_id,
        device_id=device.device_id,
        identity_key=device.identity_key,
        signing_key=device.signing_key,
    )


class DeviceKeyServicer(messaging_pb2_grpc.DeviceKeyServiceServicer):
    def __init__(self, app: Appender) -> None:
        self._app = app
        self.users: dict[str, UserDevices] = {}
        self.queues: dict[str, ToDeviceQueue] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    # --- projection -------------------------------------------------------------------------

    def apply(self, event: ReceivedEvent) -> None:
        payload = open_payload(event.envelope)
        if isinstance(payload, DeviceKeysPublished | OneTimeKeyClaimed):
            user = self.users.setdefault(payload.user_id, UserDevices(payload.user_id))
            user.last_stream_seq, user.version = event.stream_seq, user.version + 1
            if isinstance(payload, DeviceKeysPublished):
                device = user.devices.setdefault(
                    payload.device_id,
                    Device(payload.user_id, payload.device_id, payload.identity_key, payload.signing_key),
                )
                device.one_time_keys.update((k.key_id, k.key) for k in payload.one_time_keys)
            else:
                user.devices[payload.device_id].one_time_keys.pop(payload.key_id, None)
        elif isinstance(payload, ToDeviceSent):
            queue = self.queues.setdefault(payload.recipient_user_id, ToDeviceQueue(payload.recipient_user_id))
            queue.last_stream_seq, queue.version = event.stream_seq, queue.version + 1
            queue.messages.setdefault(payload.recipient_device_id, []).append(
                QueuedMessage(
                    sender_user_id=payload.sender_user_id,
                    sender_device_id=payload.sender_device_id,
                    sender_identity_key=payload.sender_identity_key,
                    olm_type=payload.olm_type,
                    ciphertext=payload.ciphertext,
                    queue_seq=payload.queue_seq,
                )
            )

    # --- commands ---------------------------------------------------------------------------

    async def _decide_and_append(
        self, subject: str, decide: Callable[[], NewEvent | None], aggregate: Callable[[], Any]
    ) -> None:
        async with self._locks[subject]:
            for _ in range(APPEND_ATTEMPTS):
                event = decide()
                if event is None:
                    return
                try:
                    await self._app.append_to(subject, event, aggregate())
                    return
                except ConcurrencyConflict:
                    await self._app.settle(subject)
        raise Unavailable("these keys are changing too fast; try again")

    async def PublishDeviceKeys(
        self, request: messaging_pb2.PublishDeviceKeysRequest, context: Context
    ) -> messaging_pb2.PublishDeviceKeysResponse:
        caller = self._app.ctx.tokens.caller(context)
        device_id = validate_device_id(request.device_id)
        identity_key = validate_key("identity_key", request.identity_key)
        signing_key = validate_key("signing_key", request.signing_key)
        keys = validate_one_time_keys([(k.key_id, k.key) for k in request.one_time_keys])

        def decide() -> NewEvent | None:
            user = self.users.get(caller.user_id, UserDevices(caller.user_id))
            check_publish(user, device_id, identity_key, signing_key, len(keys))
            existing = user.devices.get(device_id)
            if existing is not None and not keys:
                return None  # nothing new: a retried publish
            return NewEvent(
                aggregate_type="device",
                aggregate_id=caller.user_id,
                payload=DeviceKeysPublished(
                    user_id=caller.user_id,
                    device_id=device_id,
                    identity_key=identity_key,
                    signing_key=signing_key,
                    one_time_keys=[OneTimeKey(key_id=i, key=k) for i, k in keys],
                ),
                actor=caller.user_id,
            )

        await self._decide_and_append(device_subject(caller.user_id), decide, lambda: self.users.get(caller.user_id))
        left = len(self.users[caller.user_id].devices[device_id].one_time_keys)
        return messaging_pb2.PublishDeviceKeysResponse(one_time_keys_left=left)

    async def ListDevices(
        self, request: messaging_pb2.ListDevicesRequest, context: Context
    ) -> messaging_pb2.ListDevicesResponse:
        self._app.ctx.tokens.caller(context)
        if len(request.user_ids) > MAX_USERS_PER_LIST:
            raise InvalidArgument(f"ask for at most {MAX_USERS_PER_LIST} users at once")
        devices = [
            device_proto(d)
            for user_id in dict.fromkeys(request.user_ids)
            if (user := self.users.get(user_id)) is not None
            for d in user.devices.values()
        ]
        return messaging_pb2.ListDevicesResponse(devices=devices)

    async def ClaimOneTimeKey(
        self, request: messaging_pb2.ClaimOneTimeKeyRequest, context: Context
    ) -> messaging_pb2.ClaimOneTimeKeyResponse:
        caller = self._app.ctx.tokens.caller(context)
        claimed: list[tuple[str, str]] = []

        def decide() -> NewEvent:
            user = self.users.get(request.user_id) or UserDevices(request.user_id)
            key_id, key = next_one_time_key(user.device(request.device_id))
            claimed[:] = [(key_id, key)]
            return NewEvent(
                aggregate_type="device",
                aggregate_id=request.user_id,
                payload=OneTimeKeyClaimed(
                    user_id=request.user_id, device_id=request.device_id, key_id=key_id, claimed_by=caller.user_id
                ),
                actor=caller.user_id,
            )

        await self._decide_and_append(device_subject(request.user_id), decide, lambda: self.users.get(request.user_id))
        (key_id, key) = claimed[0]
        device = self.users[request.user_id].devices[request.device_id]
        return messaging_pb2.ClaimOneTimeKeyResponse(
            device=device_proto(device), one_time_key=OneTimeKey(key_id=key_id, key=key)
        )

    async def SendToDevice(
        self, request: messaging_pb2.SendToDeviceRequest, context: Context
    ) -> messaging_pb2.SendToDeviceResponse:
        caller = self._app.ctx.tokens.caller(context)
        if len(request.messages) > MAX_TO_DEVICE_PER_CALL:
            raise InvalidArgument(f"send at most {MAX_TO_DEVICE_PER_CALL} to-device messages at once")
        for message in request.messages:
            sender = require_own_device(self.users.get(caller.user_id), message.sender_device_id)
            if message.sender_identity_key != sender.identity_key:
                raise InvalidArgument("sender_identity_key is not the published identity key of the sending device")
            check_ciphertext(message.olm_type, message.ciphertext)
            (self.users.get(message.recipient_user_id) or UserDevices(message.recipient_user_id)).device(
                message.recipient_device_id
            )
        for message in request.messages:
            recipient = message.recipient_user_id

            def decide(message: messaging_pb2.ToDeviceMessage = message, recipient: str = recipient) -> NewEvent:
                queue = self.queues.get(recipient) or ToDeviceQueue(recipient)
                return NewEvent(
                    aggregate_type="todevice",
                    aggregate_id=recipient,
                    payload=ToDeviceSent(
                        recipient_user_id=recipient,
                        recipient_device_id=message.recipient_device_id,
                        sender_user_id=caller.user_id,
                        sender_device_id=message.sender_device_id,
                        sender_identity_key=message.sender_identity_key,
                        olm_type=message.olm_type,
                        ciphertext=message.ciphertext,
                        queue_seq=queue.next_seq(message.recipient_device_id),
                    ),
                    actor=caller.user_id,
                )

            await self._decide_and_append(to_device_subject(recipient), decide, partial(self.queues.get, recipient))
        return messaging_pb2.SendToDeviceResponse()

    async def FetchToDevice(
        self, request: messaging_pb2.FetchToDeviceRequest, context: Context
    ) -> messaging_pb2.FetchToDeviceResponse:
        caller = self._app.ctx.tokens.caller(context)
        require_own_device(self.users.get(caller.user_id), request.device_id)
        queue = self.queues.get(caller.user_id) or ToDeviceQueue(caller.user_id)
        limit = min(request.limit or 100, MAX_FETCH)
        return messaging_pb2.FetchToDeviceResponse(
            messages=[
                messaging_pb2.ToDeviceMessage(
                    recipient_user_id=caller.user_id,
                    recipient_device_id=request.device_id,
                    sender_user_id=m.sender_user_id,
                    sender_device_id=m.sender_device_id,
                    sender_identity_key=m.sender_identity_key,
                    olm_type=m.olm_type,
                    ciphertext=m.ciphertext,
                    queue_seq=m.queue_seq,
                )
                for m in queue.after(request.device_id, request.after_queue_seq, limit)
            ]
        )
