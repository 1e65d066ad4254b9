"""The one fold of a channel: how each event changes it (`APPLY`, keyed by event type), and
where the log holds the event (`Recorded`). Channel.apply and Channel.keep_taken use it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from parley_core.contracts import POSTED_FIELDS
from parley_core.errors import FailedPrecondition
from parley_core.same_named import same_named
from parley_messaging import events as ev
from parley_messaging.channel_state import ChannelState
from parley_messaging.messages import PostedMessage


@dataclass(frozen=True, slots=True)
class Recorded:
    """Where the log holds an event: its stream sequence (the order, and the append guard), the
    aggregate's version it carries, and its id (a marker's is remembered). Zeros in unit tests."""

    stream_seq: int = 0
    version: int = 0
    event_id: str = ""


NOWHERE = Recorded()


def _joined(channel: ChannelState, e: ev.MemberJoined, at: Recorded) -> None:
    channel.add_member(e.user_id, at.stream_seq)


def _left(channel: ChannelState, e: ev.MemberLeft | ev.MemberKicked, at: Recorded) -> None:
    channel.remove_member(e.user_id)


def _banned(channel: ChannelState, e: ev.MemberBanned, at: Recorded) -> None:
    channel.remove_member(e.user_id)
    channel.banned.add(e.user_id)
    channel.invited.pop(e.user_id, None)  # an unban needs a new invitation


def _unbanned(channel: ChannelState, e: ev.MemberUnbanned, at: Recorded) -> None:
    channel.banned.discard(e.user_id)


def _invited(channel: ChannelState, e: ev.MemberInvited, at: Recorded) -> None:
    channel.invite(e.user_id, e.invited_by, at.stream_seq)


def _declined(channel: ChannelState, e: ev.InvitationDeclined, at: Recorded) -> None:
    channel.invited.pop(e.user_id, None)


def _role_changed(channel: ChannelState, e: ev.MemberRoleChanged, at: Recorded) -> None:
    channel.set_role(e.user_id, e.role)


def _renamed(channel: ChannelState, e: ev.ChannelRenamed, at: Recorded) -> None:
    channel.name = e.name


def _topic_changed(channel: ChannelState, e: ev.ChannelTopicChanged, at: Recorded) -> None:
    channel.topic = e.topic


def _retention_set(channel: ChannelState, e: ev.ChannelRetentionSet, at: Recorded) -> None:
    channel.retention_days = e.days


def _posted(channel: ChannelState, e: ev.MessagePosted, at: Recorded) -> None:
    posted = PostedMessage(**same_named(e, *POSTED_FIELDS), sent_at_unix_ns=e.sent_at)
    channel.record_post(posted, e.idempotency_key)


def _reacted(channel: ChannelState, e: ev.ReactionAdded | ev.ReactionRemoved, at: Recorded) -> None:
    # None: its post was deleted from the stream (erased, expired, redacted); the number stays taken.
    if (record := channel.messages.get(e.channel_seq)) is not None:
        record.react(e.emoji, e.user_id, remove=isinstance(e, ev.ReactionRemoved))
    channel.keep_number(e.channel_seq)


def _read(channel: ChannelState, e: ev.ReadMarkerMoved, at: Recorded) -> None:
    channel.read_up_to[e.user_id] = max(channel.read_up_to.get(e.user_id, 0), e.channel_seq)


def _edited(channel: ChannelState, e: ev.MessageEdited, at: Recorded) -> None:
    if (record := channel.messages.get(e.channel_seq)) is not None:
        record.edited(e.body)
    channel.keep_number(e.channel_seq)


def _redacted(channel: ChannelState, e: ev.MessageRedacted, at: Recorded) -> None:
    channel.record_redaction(e.channel_seq, e.message_id)


def _removed(channel: ChannelState, e: ev.MessagesErased | ev.MessagesExpired, at: Recorded) -> None:
    channel.forget_messages(e.channel_seqs)
    channel.markers.add(at.event_id)


def _created_again(channel: ChannelState, e: ev.ChannelCreated, at: Recorded) -> None:
    raise FailedPrecondition(f"channel {channel.channel_id} was created already")  # the directory starts channels


APPLY: dict[type[ev.ChannelEvent], Callable[[ChannelState, Any, Recorded], None]] = {
    ev.ChannelCreated: _created_again,
    ev.MemberJoined: _joined,
    ev.MemberLeft: _left,
    ev.MemberKicked: _left,
    ev.MemberBanned: _banned,
    ev.MemberUnbanned: _unbanned,
    ev.MemberInvited: _invited,
    ev.InvitationDeclined: _declined,
    ev.MemberRoleChanged: _role_changed,
    ev.ChannelRenamed: _renamed,
    ev.ChannelTopicChanged: _topic_changed,
    ev.ChannelRetentionSet: _retention_set,
    ev.MessagePosted: _posted,
    ev.MessageEdited: _edited,
    ev.MessageRedacted: _redacted,
    ev.ReactionAdded: _reacted,
    ev.ReactionRemoved: _reacted,
    ev.ReadMarkerMoved: _read,
    ev.MessagesErased: _removed,
    ev.MessagesExpired: _removed,
}
