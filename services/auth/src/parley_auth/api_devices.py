"""The E2EE key directory: device identity keys, one-time keys and their claims, removal."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TypeVar

from google.protobuf.message import Message
from parley.auth.v1 import auth_pb2
from parley.auth.v1.events_pb2 import (
    DeviceKeysPublished,
    DeviceRemoved,
    OneTimeKeyClaimed,
    OneTimeKeysUploaded,
    UploadedOneTimeKey,
)

from parley_auth import keys
from parley_auth.domain import checked_id
from parley_auth.servicer_base import (
    MAX_USERS_PER_DEVICE_LIST,
    AuthBase,
    Context,
    device_proto,
    device_subject,
)
from parley_core.actor import Actor
from parley_core.envelope import NewEvent
from parley_core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from parley_core.event_log import NEW, Position
from parley_core.same_named import same_named

R = TypeVar("R")


class DevicesApi(AuthBase):
    """The E2EE key directory."""

    def _device_event(self, device_user: str, device_id: str, payload: Message, actor: Actor) -> NewEvent:
        return NewEvent(
            aggregate_type="device", aggregate_id=f"{device_user}.{device_id}", payload=payload, actor=actor
        )

    async def PublishDeviceKeys(self, request: auth_pb2.PublishDeviceKeysRequest, context: Context) -> auth_pb2.Device:
        caller = self._caller(context)
        keys.check_device_keys(
            caller.user_id,
            request.device_id,
            curve25519=request.curve25519,
            ed25519=request.ed25519,
            signature=request.signature,
            display_name=request.display_name,
        )
        if (caller.user_id, request.device_id) in self.keys.removed:
            raise AlreadyExists("this device id was removed; register the device under a new id")
        existing = self.keys.get(caller.user_id, request.device_id)
        if existing is not None:
            if (existing.curve25519, existing.ed25519) == (request.curve25519, request.ed25519):
                return device_proto(existing)
            raise AlreadyExists("this device id already has other identity keys; register the device under a new id")
        if len(self.keys.of_user(caller.user_id)) >= keys.MAX_DEVICES_PER_USER:
            raise ResourceExhausted(f"at most {keys.MAX_DEVICES_PER_USER} devices per user; remove one first")
        published = DeviceKeysPublished(user_id=caller.user_id, **same_named(request, *keys.PUBLISHED_KEY_FIELDS))
        event = self._device_event(caller.user_id, request.device_id, published, Actor.user(caller.user_id))
        try:
            await self.events.append(device_subject(caller.user_id, request.device_id), [event], NEW)
        except FailedPrecondition:
            raise AlreadyExists("this device id was registered at the same time; use a new device id") from None
        device = self.keys.get(caller.user_id, request.device_id)
        assert device is not None
        return device_proto(device)

    async def _change_device(
        self,
        user_id: str,
        device_id: str,
        actor: Actor,
        decide: Callable[[keys.DeviceRecord | None], tuple[Message | None, R]],
    ) -> tuple[keys.DeviceRecord | None, R]:
        """The one way a device's keys change (parley_core.event_log): `decide` makes the event
        from the device as read (None: nothing to append) and the call's answer; two racing
        changes (a second claim of the same key, from any instance) never both land: the loser
        catches up and decides again. Returns the device after the change, and the answer."""

        def decided(device: keys.DeviceRecord | None) -> tuple[list[NewEvent], R]:
            payload, answer = decide(device)
            return ([] if payload is None else [self._device_event(user_id, device_id, payload, actor)]), answer

        return await self.events.decide_and_append(
            device_subject(user_id, device_id),
            partial(self.keys.get, user_id, device_id),
            decided,
            position=lambda device: Position(device.version, device.last_seq) if device else NEW,
            too_fast="the device's keys are changing too fast; try again",
        )

    async def UploadOneTimeKeys(
        self, request: auth_pb2.UploadOneTimeKeysRequest, context: Context
    ) -> auth_pb2.UploadOneTimeKeysResponse:
        caller = self._caller(context)
        device_id = keys.validate_device_id(request.device_id)
        uploaded = [keys.StoredKey(k.key_id, k.key, k.signature) for k in request.keys]
        fb = request.fallback_key
        fallback = keys.StoredKey(fb.key_id, fb.key, fb.signature) if request.HasField("fallback_key") else None

        def decide(device: keys.DeviceRecord | None) -> tuple[Message, None]:
            if device is None:
                raise NotFound("no such device of yours; publish its identity keys first")
            device.check_upload(uploaded, fallback)
            payload = OneTimeKeysUploaded(
                user_id=caller.user_id,
                device_id=device_id,
                keys=[UploadedOneTimeKey(key_id=k.key_id, key=k.key, signature=k.signature) for k in uploaded],
            )
            if fallback is not None:
                payload.fallback_key.CopyFrom(
                    UploadedOneTimeKey(key_id=fallback.key_id, key=fallback.key, signature=fallback.signature)
                )
            return payload, None

        device, _ = await self._change_device(caller.user_id, device_id, Actor.user(caller.user_id), decide)
        assert device is not None
        return auth_pb2.UploadOneTimeKeysResponse(one_time_keys_left=len(device.unclaimed))

    async def ClaimOneTimeKey(
        self, request: auth_pb2.ClaimOneTimeKeyRequest, context: Context
    ) -> auth_pb2.ClaimedOneTimeKey:
        caller = self._caller(context)
        user_id = checked_id(request.user_id, "user_id")
        device_id = keys.validate_device_id(request.device_id)

        def decide(device: keys.DeviceRecord | None) -> tuple[Message | None, keys.StoredKey]:
            if device is None:
                raise NotFound("no such device")
            key = device.next_key()
            if key is None:
                if device.fallback is None:
                    raise FailedPrecondition(
                        "this device has no one-time keys left and no fallback key; its owner must upload more"
                    )
                return None, device.fallback  # reusable until replaced: nothing to record, nothing to race for
            claimed = OneTimeKeyClaimed(
                user_id=user_id, device_id=device_id, key_id=key.key_id, claimed_by=caller.user_id
            )
            return claimed, key

        device, key = await self._change_device(user_id, device_id, Actor.user(caller.user_id), decide)
        assert device is not None
        return auth_pb2.ClaimedOneTimeKey(
            device=device_proto(device),
            one_time_key=UploadedOneTimeKey(key_id=key.key_id, key=key.key, signature=key.signature),
            fallback=key is device.fallback,
        )

    async def ListDevices(self, request: auth_pb2.ListDevicesRequest, context: Context) -> auth_pb2.ListDevicesResponse:
        caller = self._caller(context)
        if request.user_ids:
            if len(request.user_ids) > MAX_USERS_PER_DEVICE_LIST:
                raise InvalidArgument(f"ask for at most {MAX_USERS_PER_DEVICE_LIST} users at once")
            user_ids = list(dict.fromkeys(request.user_ids))
        else:
            user_ids = [request.user_id or caller.user_id]
            self._account(user_ids[0])
        return auth_pb2.ListDevicesResponse(devices=[device_proto(d) for u in user_ids for d in self.keys.of_user(u)])

    async def RemoveDevice(
        self, request: auth_pb2.RemoveDeviceRequest, context: Context
    ) -> auth_pb2.RemoveDeviceResponse:
        caller = self._caller(context)
        device_id = keys.validate_device_id(request.device_id)

        def decide(device: keys.DeviceRecord | None) -> tuple[Message | None, None]:
            if device is None:
                if (caller.user_id, device_id) in self.keys.removed:
                    return None, None  # a retried removal
                raise NotFound("no such device of yours; `parley devices` lists them")
            return DeviceRemoved(user_id=caller.user_id, device_id=device_id, removed_by=caller.user_id), None

        actor = Actor.user(caller.user_id)
        if self.keys.get(caller.user_id, device_id) is None:
            await self._change_device(caller.user_id, device_id, actor, decide)  # a retry, or NOT_FOUND
            return auth_pb2.RemoveDeviceResponse()
        async with self.audit.recorded("device_removed", actor=actor, user_id=caller.user_id, detail=device_id):
            await self._change_device(caller.user_id, device_id, actor, decide)
        return auth_pb2.RemoveDeviceResponse()
