"""The to-device relay's projection without servers: auth's users and devices, and the queues
of ciphertext, from events sealed as the streams hold them."""

from __future__ import annotations

from google.protobuf.message import Message
from parley.auth.v1.events_pb2 import DeviceKeysPublished, DeviceRemoved, UserRegistered
from parley.common.v1.envelope_pb2 import EventEnvelope
from parley.messaging.v1.events_pb2 import ToDeviceFetched, ToDeviceSent

from parley_core.envelope import NewEvent, seal
from parley_messaging.device_projection import DeviceRelay
from parley_messaging.devices import AuthDirectory


def sealed(aggregate_type: str, aggregate_id: str, payload: Message) -> EventEnvelope:
    event = NewEvent(aggregate_type=aggregate_type, aggregate_id=aggregate_id, payload=payload, actor="test")
    return seal(event, aggregate_version=1, producer="test", trace_context={})


def sent(queue_seq: int, device: str = "phone", size: int = 10) -> ToDeviceSent:
    return ToDeviceSent(
        recipient_user_id="bob",
        recipient_device_id=device,
        sender_user_id="alice",
        sender_device_id="laptop",
        olm_type=1,
        ciphertext=b"x" * size,
        queue_seq=queue_seq,
    )


def relay_with_devices() -> DeviceRelay:
    relay = DeviceRelay(AuthDirectory())
    relay.apply_auth(sealed("user", "bob", UserRegistered(user_id="bob")))
    for device in ("phone", "tablet"):
        published = DeviceKeysPublished(user_id="bob", device_id=device, curve25519=b"\x01" * 32)
        relay.apply_auth(sealed("device", device, published))
    return relay


def test_users_and_devices_follow_auths_events() -> None:
    relay = relay_with_devices()
    assert relay.directory.users == {"bob"}
    assert relay.directory.identity_key("bob", "phone") == "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE"
    relay.apply_auth(sealed("device", "phone", DeviceRemoved(user_id="bob", device_id="phone")))
    assert relay.directory.identity_key("bob", "phone") is None
    assert ("bob", "phone") in relay.directory.removed


def test_a_fetch_delivers_what_it_covers_and_the_senders_bytes_leave_the_cap() -> None:
    relay = relay_with_devices()
    for seq in (1, 2, 3):
        relay.apply(sealed("todevice", "bob", sent(seq)), stream_seq=10 + seq)
    queue = relay.queues["bob"]
    assert ([m.queue_seq for m in queue.after("phone", 0, 10)], queue.version, queue.last_stream_seq) == (
        [1, 2, 3],
        3,
        13,
    )
    assert relay.undelivered.bytes_of == {"alice": 30}
    fetched = ToDeviceFetched(recipient_user_id="bob", recipient_device_id="phone", up_to_queue_seq=2)
    relay.apply(sealed("todevice", "bob", fetched), stream_seq=14)
    assert [m.queue_seq for m in queue.after("phone", 0, 10)] == [3]
    assert relay.undelivered.bytes_of == {"alice": 10}


def test_what_waited_for_a_removed_device_goes_and_nothing_more_is_kept_for_it() -> None:
    relay = relay_with_devices()
    relay.apply(sealed("todevice", "bob", sent(1, "phone")), stream_seq=1)
    relay.apply(sealed("todevice", "bob", sent(1, "tablet")), stream_seq=2)
    relay.apply_auth(sealed("device", "phone", DeviceRemoved(user_id="bob", device_id="phone")))
    relay.apply(sealed("todevice", "bob", sent(2, "phone")), stream_seq=3)
    queue = relay.queues["bob"]
    assert (queue.after("phone", 0, 10), len(queue.after("tablet", 0, 10))) == ([], 1)
    assert queue.next_seq("phone") == 3  # its numbers stay taken
    assert relay.undelivered.bytes_of == {"alice": 10}
