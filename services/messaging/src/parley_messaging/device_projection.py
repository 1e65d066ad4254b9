"""The to-device relay's state from events, no I/O: which users and devices exist (auth's
events), and each user's queue of ciphertext waiting for their devices (messaging's own
ToDeviceSent / ToDeviceFetched). Each stream's events go through one table keyed by type."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from parley.auth.v1.events_pb2 import DeviceKeysPublished, DeviceRemoved, UserRegistered
from parley.common.v1.envelope_pb2 import EventEnvelope
from parley.messaging.v1.events_pb2 import ToDeviceFetched, ToDeviceSent

from parley_core.envelope import open_payload
from parley_core.same_named import same_named
from parley_messaging.devices import QUEUED_FIELDS, AuthDirectory, QueuedMessage, ToDeviceQueue, UndeliveredBySender


class DeviceRelay:
    def __init__(self, directory: AuthDirectory) -> None:
        self.directory = directory
        self.queues: dict[str, ToDeviceQueue] = {}
        self.undelivered = UndeliveredBySender()

    def queue(self, user_id: str) -> ToDeviceQueue:
        return self.queues.get(user_id) or ToDeviceQueue(user_id)

    # --- auth's users and devices ---------------------------------------------------------------

    def apply_auth(self, envelope: EventEnvelope) -> None:
        """Users and devices from auth's stream (other auth events are skipped unopened)."""
        if envelope.aggregate_type not in ("user", "device"):
            return
        payload = open_payload(envelope)
        if (fold := _AUTH.get(payload.DESCRIPTOR.full_name)) is not None:
            fold(self, payload)

    def _registered(self, e: UserRegistered) -> None:
        self.directory.users.add(e.user_id)

    def _published(self, e: DeviceKeysPublished) -> None:
        self.directory.add_device(e.user_id, e.device_id, e.curve25519)

    def _removed(self, e: DeviceRemoved) -> None:
        self.directory.remove_device(e.user_id, e.device_id)
        if (queue := self.queues.get(e.user_id)) is not None:
            self.undelivered.left(queue.drop(e.device_id))

    # --- the queues -----------------------------------------------------------------------------

    def apply(self, envelope: EventEnvelope, stream_seq: int) -> None:
        payload: Any = open_payload(envelope)
        fold = _QUEUE.get(payload.DESCRIPTOR.full_name)
        if fold is None:
            return  # messaging's retired key directory events (parley.msg.device.*)
        queue = self.queues.setdefault(payload.recipient_user_id, ToDeviceQueue(payload.recipient_user_id))
        queue.last_stream_seq, queue.version = stream_seq, queue.version + 1
        fold(self, queue, payload)

    def _fetched(self, queue: ToDeviceQueue, e: ToDeviceFetched) -> None:
        self.undelivered.left(queue.delivered(e.recipient_device_id, e.up_to_queue_seq))

    def _sent(self, queue: ToDeviceQueue, e: ToDeviceSent) -> None:
        message = QueuedMessage(**same_named(e, *QUEUED_FIELDS))
        removed = (e.recipient_user_id, e.recipient_device_id) in self.directory.removed
        if queue.add(e.recipient_device_id, message, keep=not removed):
            self.undelivered.queued(message)


_AUTH: dict[str, Callable[[DeviceRelay, Any], None]] = {
    UserRegistered.DESCRIPTOR.full_name: DeviceRelay._registered,
    DeviceKeysPublished.DESCRIPTOR.full_name: DeviceRelay._published,
    DeviceRemoved.DESCRIPTOR.full_name: DeviceRelay._removed,
}
_QUEUE: dict[str, Callable[[DeviceRelay, ToDeviceQueue, Any], None]] = {
    ToDeviceSent.DESCRIPTOR.full_name: DeviceRelay._sent,
    ToDeviceFetched.DESCRIPTOR.full_name: DeviceRelay._fetched,
}
