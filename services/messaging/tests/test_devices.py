"""The to-device relay's rules and its view of auth's key directory, without I/O."""

import pytest

from parley_core.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted
from parley_messaging.devices import (
    MAX_UNDELIVERED_BYTES_PER_SENDER,
    AuthDirectory,
    QueuedMessage,
    ToDeviceQueue,
    UndeliveredBySender,
    check_ciphertext,
    key_base64,
    require_device,
    require_own_device,
    validate_encrypted_body,
)

CURVE = bytes(range(32))


def queued(seq: int, sender: str = "alice", size: int = 1) -> QueuedMessage:
    return QueuedMessage(sender, "laptop", key_base64(CURVE), 0, b"x" * size, seq)


def test_only_own_published_devices_send_and_fetch() -> None:
    directory = AuthDirectory()
    directory.add_device("alice", "laptop", CURVE)
    assert require_own_device(directory, "alice", "laptop") == key_base64(CURVE)
    with pytest.raises(PermissionDenied):
        require_own_device(directory, "alice", "phone")
    with pytest.raises(PermissionDenied):
        require_own_device(directory, "bob", "laptop")
    with pytest.raises(InvalidArgument):
        require_own_device(directory, "alice", "")


def test_a_removed_device_is_gone_and_stays_gone() -> None:
    directory = AuthDirectory()
    directory.add_device("bob", "phone", CURVE)
    require_device(directory, "bob", "phone")
    directory.remove_device("bob", "phone")
    with pytest.raises(NotFound, match="removed"):
        require_device(directory, "bob", "phone")
    # Replayed out of order (auth and messaging streams are read separately): still removed.
    directory.add_device("bob", "phone", CURVE)
    with pytest.raises(NotFound):
        require_device(directory, "bob", "phone")


def test_queue_pages_by_sequence_and_drops_what_waited_for_a_removed_device() -> None:
    queue = ToDeviceQueue("bob")
    for n in range(1, 4):
        queue.add("phone", queued(n), keep=True)
    assert queue.next_seq("phone") == 4
    assert [m.queue_seq for m in queue.after("phone", 1, 10)] == [2, 3]
    assert queue.after("tablet", 0, 10) == []
    queue.drop("phone")
    assert queue.after("phone", 0, 10) == []
    queue.add("phone", queued(4), keep=False)
    assert queue.after("phone", 0, 10) == []
    assert queue.next_seq("phone") == 5  # sequence numbers are never reused


def test_input_validation() -> None:
    with pytest.raises(InvalidArgument):
        check_ciphertext(2, b"x")
    with pytest.raises(InvalidArgument):
        check_ciphertext(0, b"")
    assert validate_encrypted_body("megolm.v1:dev:sid:AAAA").startswith("megolm.v1:")
    with pytest.raises(InvalidArgument, match="end-to-end encrypted"):
        validate_encrypted_body("hello in plain text")


def test_what_a_device_fetched_past_leaves_its_queue_and_stays_gone_on_replay() -> None:
    queue = ToDeviceQueue("bob")
    for n in range(1, 5):
        assert queue.add("phone", queued(n), keep=True)
    assert [m.queue_seq for m in queue.delivered("phone", 2)] == [1, 2]
    assert [m.queue_seq for m in queue.after("phone", 0, 10)] == [3, 4]
    assert queue.delivered("phone", 1) == []  # an older position acknowledges nothing again
    assert not queue.add("phone", queued(2), keep=True)  # a replayed send it already fetched past
    assert [m.queue_seq for m in queue.after("phone", 0, 10)] == [3, 4]


def test_undelivered_bytes_are_capped_per_sender_and_freed_by_delivery() -> None:
    undelivered = UndeliveredBySender()
    big = queued(1, "mallory", MAX_UNDELIVERED_BYTES_PER_SENDER - 10)
    undelivered.queued(big)
    undelivered.check("mallory", 10)
    with pytest.raises(ResourceExhausted, match="not fetched yet"):
        undelivered.check("mallory", 11)
    undelivered.check("alice", MAX_UNDELIVERED_BYTES_PER_SENDER)  # another sender's budget is whole
    undelivered.left([big])
    undelivered.check("mallory", MAX_UNDELIVERED_BYTES_PER_SENDER)
    assert undelivered.bytes_of == {}
