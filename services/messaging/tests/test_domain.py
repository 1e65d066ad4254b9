import pytest

from parley_core.errors import InvalidArgument, NotFound, PermissionDenied
from parley_messaging.domain import (
    ChannelDirectory,
    send_event_id,
    validate_body,
    validate_channel_name,
    validate_idempotency_key,
)


def test_same_send_has_same_event_id() -> None:
    assert send_event_id("c1", "u1", "k") == send_event_id("c1", "u1", "k")
    assert send_event_id("c1", "u1", "k") != send_event_id("c1", "u2", "k")
    assert send_event_id("c1", "u1", "k") != send_event_id("c2", "u1", "k")


def test_validation() -> None:
    assert validate_channel_name("  general ") == "general"
    for bad_name in ("", "   ", "x" * 65, "bad\nname"):
        with pytest.raises(InvalidArgument):
            validate_channel_name(bad_name)
    assert validate_body("hi") == "hi"
    for bad_body in ("", "  \n", "x" * 4001):
        with pytest.raises(InvalidArgument):
            validate_body(bad_body)
    assert validate_idempotency_key("")  # a fresh key when the client gave none
    with pytest.raises(InvalidArgument):
        validate_idempotency_key("k" * 129)


def test_directory_membership() -> None:
    directory = ChannelDirectory()
    directory.create("c1", "general", "alice", stream_seq=1)
    channel = directory.get("c1")
    channel.require_member("alice")
    with pytest.raises(PermissionDenied):
        channel.require_member("bob")
    with pytest.raises(NotFound):
        directory.get("nope")
    assert [c.channel_id for c in directory.of_member("alice")] == ["c1"]
    assert directory.of_member("bob") == []
