"""The key directory's rules, without I/O."""

import pytest

from parley_core.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, ResourceExhausted
from parley_messaging.devices import (
    Device,
    QueuedMessage,
    ToDeviceQueue,
    UserDevices,
    check_ciphertext,
    check_publish,
    next_one_time_key,
    require_own_device,
    validate_device_id,
    validate_encrypted_body,
    validate_key,
)

KEY = "A" * 43


def test_a_device_keeps_its_identity_keys() -> None:
    user = UserDevices("alice", {"laptop": Device("alice", "laptop", KEY, KEY)})
    check_publish(user, "laptop", KEY, KEY, new_keys=10)
    with pytest.raises(FailedPrecondition, match="new device id"):
        check_publish(user, "laptop", "B" * 43, KEY, new_keys=0)
    check_publish(user, "phone", "B" * 43, KEY, new_keys=10)


def test_one_time_keys_are_handed_out_oldest_first_until_none_are_left() -> None:
    device = Device("alice", "laptop", KEY, KEY, {"k1": "K1", "k2": "K2"})
    assert next_one_time_key(device) == ("k1", "K1")
    device.one_time_keys.clear()
    with pytest.raises(ResourceExhausted, match="publish more"):
        next_one_time_key(device)
    with pytest.raises(NotFound):
        UserDevices("alice").device("laptop")


def test_only_own_devices_send_and_fetch() -> None:
    user = UserDevices("alice", {"laptop": Device("alice", "laptop", KEY, KEY)})
    assert require_own_device(user, "laptop").device_id == "laptop"
    with pytest.raises(PermissionDenied):
        require_own_device(user, "phone")
    with pytest.raises(PermissionDenied):
        require_own_device(None, "laptop")


def test_queue_pages_by_sequence() -> None:
    queue = ToDeviceQueue("bob")
    for n in range(1, 4):
        queue.messages.setdefault("phone", []).append(QueuedMessage("alice", "laptop", KEY, 0, b"x", n))
    assert queue.next_seq("phone") == 4
    assert [m.queue_seq for m in queue.after("phone", 1, 10)] == [2, 3]
    assert queue.after("tablet", 0, 10) == []


def test_input_validation() -> None:
    for bad in ("", "has space", "x" * 65):
        with pytest.raises(InvalidArgument):
            validate_device_id(bad)
    for bad_key in ("", "not base64!", "A" * 65):
        with pytest.raises(InvalidArgument):
            validate_key("identity_key", bad_key)
    with pytest.raises(InvalidArgument):
        check_ciphertext(2, b"x")
    with pytest.raises(InvalidArgument):
        check_ciphertext(0, b"")
    assert validate_encrypted_body("megolm.v1:dev:sid:AAAA").startswith("megolm.v1:")
    with pytest.raises(InvalidArgument, match="end-to-end encrypted"):
        validate_encrypted_body("hello in plain text")
