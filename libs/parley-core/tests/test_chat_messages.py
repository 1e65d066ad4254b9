"""The one ChatMessage builder: the shape rules every service's answers share."""

from __future__ import annotations

from parley_core.chat_messages import chat_message


def test_reactions_come_in_a_stable_order_whatever_the_record_holds() -> None:
    message = chat_message(channel_id="c", channel_seq=1, reactions={"👍": {"u2", "u1"}, "🎉": ["u3"]})
    assert [(r.emoji, list(r.user_ids)) for r in message.reactions] == sorted([("👍", ["u1", "u2"]), ("🎉", ["u3"])])
    pairs = chat_message(channel_id="c", channel_seq=1, reactions=[("👍", ("u2", "u1"))])
    assert list(pairs.reactions[0].user_ids) == ["u1", "u2"]


def test_a_redacted_or_erased_message_carries_no_text() -> None:
    assert chat_message(channel_id="c", channel_seq=1, body="secret", redacted=True).body == ""
    erased = chat_message(channel_id="c", channel_seq=1, body="secret", sender_name="alice", erased=True)
    assert (erased.body, erased.sender_name) == ("", "")
    assert chat_message(channel_id="c", channel_seq=1, body="hello").body == "hello"


def test_the_send_time_is_set_only_when_known() -> None:
    assert (
        chat_message(channel_id="c", channel_seq=1, sent_at_ns=1_500_000_000).sent_at.ToNanoseconds() == 1_500_000_000
    )
    assert not chat_message(channel_id="c", channel_seq=1).HasField("sent_at")
    assert chat_message(channel_id="c", channel_seq=1, sent_at_ns=0).HasField("sent_at")
