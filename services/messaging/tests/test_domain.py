from collections.abc import Iterator

import pytest

from parley_core.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from parley_messaging.inputs import send_event_id, validate_body, validate_channel_name, validate_idempotency_key
from parley_messaging.messages import MessageRecord, PostedMessage
from parley_messaging.projection import ChannelDirectory


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


def _channel_with_message() -> tuple[ChannelDirectory, PostedMessage]:
    directory = ChannelDirectory()
    directory.create("c1", "general", "owner", stream_seq=1)
    channel = directory.get("c1")
    channel.members |= {"alice", "bob"}
    posted = PostedMessage("c1", "m1", "alice", "alice", 1, "first text", 0)
    channel.record_post(posted, "key-1")
    return directory, posted


def test_retried_send_finds_the_first_message() -> None:
    directory, posted = _channel_with_message()
    channel = directory.get("c1")
    assert channel.earlier_send("alice", "key-1") == posted
    assert channel.earlier_send("alice", "key-2") is None
    assert channel.earlier_send("bob", "key-1") is None


def test_only_the_sender_edits_and_moderators_see_every_version() -> None:
    directory, _ = _channel_with_message()
    channel = directory.get("c1")
    with pytest.raises(PermissionDenied):
        channel.check_edit("bob", 1)
    with pytest.raises(NotFound):
        channel.check_edit("alice", 2)
    channel.check_edit("alice", 1).edited("second text")
    record = channel.message(1)
    assert (record.current.body, record.current.edit_count) == ("second text", 1)
    assert record.versions == ["first text", "second text"]
    assert channel.is_moderator("owner")
    assert not channel.is_moderator("alice")


def test_redaction_removes_every_version_and_blocks_edits() -> None:
    directory, _ = _channel_with_message()
    channel = directory.get("c1")
    channel.message(1).edited("second text")
    with pytest.raises(PermissionDenied):
        channel.check_redact("bob", 1)  # neither sender nor moderator
    channel.check_redact("owner", 1).redacted()
    record = channel.message(1)
    assert record.current.redacted
    assert record.current.body == ""
    assert record.versions == []
    with pytest.raises(FailedPrecondition):
        channel.check_edit("alice", 1)


def test_forgotten_messages_leave_no_text_and_keep_their_numbers() -> None:
    channel = ChannelDirectory().create("c1", "general", "bob", stream_seq=1, others=("alice",))
    for seq, sender, root in ((1, "bob", 0), (2, "alice", 1), (3, "alice", 0)):
        posted = PostedMessage("c1", f"m{seq}", sender, sender, seq, f"text {seq}", 0, thread_root_seq=root)
        channel.record_post(posted, idempotency_key=f"k{seq}")
    channel.forget_messages([2, 3])  # alice's, the newest among them
    assert sorted(channel.messages) == [1]
    assert channel.messages[1].replies == []
    assert channel.earlier_send("alice", "k3") is None
    assert channel.last_seq == 3  # the next message is #4, never a second #3
    with pytest.raises(NotFound):
        channel.message(2)


def test_a_redaction_of_a_message_never_seen_keeps_its_number_and_shows_it_redacted() -> None:
    directory, _ = _channel_with_message()
    channel = directory.get("c1")
    channel.record_redaction(3, "m3")  # its post (#3, the newest) was deleted from the stream
    placeholder = channel.message(3).current
    assert (placeholder.redacted, placeholder.body, placeholder.message_id) == (True, "", "m3")
    assert channel.message(3).versions == []
    assert channel.last_seq == 3  # the next message is #4
    assert 2 not in channel.messages  # only the number is kept, not a message that was never there
    with pytest.raises(FailedPrecondition):
        channel.check_edit("alice", 3)
    channel.record_redaction(1, "m1")  # a message it knows is redacted as before
    assert channel.message(1).current.redacted
    assert channel.message(1).current.sender_id == "alice"
    assert channel.last_seq == 3


def test_numbers_seen_in_edits_and_reactions_stay_taken() -> None:
    directory, _ = _channel_with_message()
    channel = directory.get("c1")
    channel.keep_number(5)
    channel.keep_number(2)  # never lowers it
    assert channel.last_seq == 5
    assert sorted(channel.messages) == [1]


class _VisitCounting(dict[int, MessageRecord]):
    """A channel's messages that count each one looked at, and refuse more looks than they hold
    (so a walk over every number of a span of 10**9 fails at once instead of running for hours)."""

    visits = 0

    def _visit(self) -> None:
        self.visits += 1
        assert self.visits <= len(self), "looked at more numbers than the channel holds messages"

    def get(self, key: int, default: object = None) -> MessageRecord | None:  # type: ignore[override]
        self._visit()
        return super().get(key, default)  # type: ignore[arg-type]

    def items(self) -> Iterator[tuple[int, MessageRecord]]:  # type: ignore[override]
        for item in super().items():
            self._visit()
            yield item


def test_the_unread_count_over_a_jump_in_numbering_visits_only_held_messages() -> None:
    """A post numbered 10**9 (a gap is legitimate: retention and erasure leave them; a forged one
    with a stolen credential makes it huge) must not make the unread count walk every number."""
    channel = ChannelDirectory().create("c1", "general", "bob", stream_seq=1, others=("alice",))
    jump = 10**9
    for seq, sender in ((1, "alice"), (2, "bob"), (jump, "alice"), (jump + 1, "bob"), (jump + 2, "alice")):
        channel.record_post(PostedMessage("c1", f"m{seq}", sender, sender, seq, f"text {seq}", 0), f"k{seq}")
    channel.read_up_to["bob"] = 1
    counting = _VisitCounting(channel.messages)
    channel.messages = counting
    assert channel.unread_count("bob") == 2  # alice's #10**9 and #10**9+2; bob's own do not count
    assert counting.visits == len(counting)
    counting.visits = 0
    channel.read_up_to["bob"] = jump + 1
    assert channel.unread_count("bob") == 1  # a short span is walked by number: one look
    assert counting.visits == 1
