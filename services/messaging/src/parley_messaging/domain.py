"""Channels: membership, the per-channel message order and idempotent sends, without I/O.

`Channel` is the aggregate: `Channel.created` starts one from its `ChannelCreated`, and
`Channel.apply` folds every later event through one table (`APPLY`, keyed by event type). The
`check_*` rules say whether someone may act; `decisions` turns commands into events with them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from parley_core.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from parley_core.visibility import EVERYTHING, HistoryView
from parley_messaging import events as ev
from parley_messaging.messages import MessageRecord, PostedMessage

OWNER, MODERATOR, MEMBER = "owner", "moderator", "member"


@dataclass(frozen=True, slots=True)
class Recorded:
    """Where the log holds an event: its stream sequence (the order, and the append guard), the
    aggregate's version it carries, and its id (a marker's is remembered). Zeros in unit tests."""

    stream_seq: int = 0
    version: int = 0
    event_id: str = ""


NOWHERE = Recorded()


@dataclass(frozen=True)
class Invitation:
    """A pending invitation: who invited, and the stream position of the invitation (its order)."""

    invited_by: str
    position: int = 0


@dataclass
class Channel:
    channel_id: str
    name: str
    members: set[str] = field(default_factory=set)
    last_seq: int = 0  # channel sequence of the newest message
    last_stream_seq: int = 0  # stream sequence of the newest event: the append guard
    version: int = 1  # events applied to this aggregate
    sends: dict[tuple[str, str], int] = field(default_factory=dict)  # (sender, key) -> channel_seq
    messages: dict[int, MessageRecord] = field(default_factory=dict)
    creator_id: str = ""
    encrypted: bool = False
    private: bool = False
    direct: bool = False
    topic: str = ""
    hide_history_before_join: bool = False
    roles: dict[str, str] = field(default_factory=dict)  # user -> OWNER | MODERATOR (members have none)
    invited: dict[str, Invitation] = field(default_factory=dict)  # invitee -> their pending invitation
    banned: set[str] = field(default_factory=set)
    views: dict[str, HistoryView] = field(default_factory=dict)  # user -> what they may read (latest join)
    read_up_to: dict[str, int] = field(default_factory=dict)  # user -> read marker
    # Event ids of the erasure and expiry markers applied: each is appended once (markers.py).
    markers: set[str] = field(default_factory=set)
    # The retention policy recorded on this channel (ChannelRetentionSet); 0: keep forever. The
    # one record an expiry fact of storage's is checked against.
    retention_days: int = 0

    @classmethod
    def created(cls, event: ev.ChannelCreated, at: Recorded = NOWHERE) -> Channel:
        channel = cls(
            event.channel_id,
            event.name,
            last_stream_seq=at.stream_seq,
            version=max(1, at.version),
            creator_id=event.creator_id,
            encrypted=event.encrypted,
            private=event.private or event.direct,
            direct=event.direct,
            hide_history_before_join=event.hide_history_before_join,
        )
        for user_id in (event.creator_id, *event.member_ids):
            channel.add_member(user_id, at.stream_seq)
        if not event.direct:
            channel.roles[event.creator_id] = OWNER
        return channel

    def apply(self, event: ev.ChannelEvent | None, at: Recorded = NOWHERE) -> None:
        """Fold one event of this channel. None: a newer writer's event this release cannot read
        (during a roll-out); its position and version still count."""
        self.last_stream_seq = at.stream_seq
        # From the envelope, not counted: an erasure deletes events, leaving gaps in the stream.
        self.version = max(self.version, at.version)
        if event is not None:
            APPLY[type(event)](self, event, at)

    def keep_taken(self, event: ev.ChannelEvent | None, at: Recorded) -> None:
        """What an event deleted from the log's tail leaves taken (log_tail.py): its version, the
        message number it used, the messages it removed (so no second marker is appended). The
        append guard (last_stream_seq) stays the newest event the log still holds."""
        self.version = max(self.version, at.version)
        if isinstance(event, ev.MessageRedacted | ev.MessagesErased | ev.MessagesExpired):
            APPLY[type(event)](self, event, at)
        numbered = ev.MessagePosted | ev.MessageEdited | ev.MessageRedacted | ev.ReactionAdded | ev.ReactionRemoved
        if isinstance(event, numbered):
            self.keep_number(event.channel_seq)

    def require_member(self, user_id: str) -> None:
        if user_id not in self.members:
            raise PermissionDenied("you are not a member of this channel; join it first")

    def role(self, user_id: str) -> str:
        if user_id not in self.members:
            return ""
        return self.roles.get(user_id, MEMBER)

    def is_moderator(self, user_id: str) -> bool:
        """Owners and moderators moderate; a direct conversation has neither."""
        return self.role(user_id) in (OWNER, MODERATOR)

    def add_member(self, user_id: str, position: int = 0) -> None:
        """`user_id` joins by the event at stream `position` (0: not known, as in unit tests)."""
        self.members.add(user_id)
        self.invited.pop(user_id, None)  # joining accepts the invitation
        self.views[user_id] = HistoryView.at_join(
            hides_history=self.hide_history_before_join, newest_seq_at_join=self.last_seq, joined_at=position
        )

    def view(self, user_id: str) -> HistoryView:
        """What this user may read of the channel (parley_core.visibility: the one rule)."""
        return self.views.get(user_id, EVERYTHING)

    def readable(self, user_id: str, channel_seq: int) -> MessageRecord:
        """A message a member may read and act on: every command and view about an existing
        message starts here, so a hidden one yields no byte through any of them."""
        if channel_seq < 1:
            raise InvalidArgument("message numbers start at 1")
        self.require_member(user_id)
        self.view(user_id).require(channel_seq)
        return self.message(channel_seq)

    def earlier_versions(self, user_id: str, channel_seq: int) -> MessageRecord:
        """A message with every text it had: for the channel's moderators only."""
        if not self.is_moderator(user_id):
            raise PermissionDenied("only a moderator of the channel may see earlier versions of a message")
        return self.readable(user_id, channel_seq)

    def remove_member(self, user_id: str) -> None:
        self.members.discard(user_id)
        self.roles.pop(user_id, None)

    # --- membership rules: each returns normally when the caller may act --------------------

    def check_join(self, user_id: str) -> None:
        if user_id in self.banned:
            raise PermissionDenied("you are banned from this channel")
        if self.direct:
            raise PermissionDenied("a direct conversation has fixed members; start a new one instead")
        if self.private and user_id not in self.invited:
            raise PermissionDenied("this channel is private: a moderator must invite you first")

    def check_invite(self, actor: str, user_id: str) -> None:
        self.require_member(actor)
        if self.direct:
            raise FailedPrecondition("a direct conversation has fixed members; start a new one instead")
        if self.private and not self.is_moderator(actor):
            raise PermissionDenied("only a moderator may invite to a private channel")
        if user_id in self.banned:
            raise FailedPrecondition("that user is banned; unban them first")

    def invite(self, user_id: str, invited_by: str, position: int = 0) -> None:
        self.invited[user_id] = Invitation(invited_by, position)

    def pending_invitation(self, user_id: str) -> Invitation | None:
        """`user_id`'s invitation they may still accept (joining or a ban ends it)."""
        return None if user_id in self.members else self.invited.get(user_id)

    def check_decline(self, user_id: str) -> None:
        if self.pending_invitation(user_id) is None:
            raise NotFound("you have no pending invitation to this channel")

    def check_remove(self, actor: str, user_id: str) -> None:
        """Kick or ban: a moderator over a plain member; the owner over moderators too."""
        if not self.is_moderator(actor):
            raise PermissionDenied("only a moderator of the channel may remove members")
        if user_id == actor:
            raise InvalidArgument("use LeaveChannel to leave yourself")
        target = self.role(user_id)
        if target == OWNER or (target == MODERATOR and self.role(actor) != OWNER):
            raise PermissionDenied("only the owner may remove a moderator, and nobody the owner")

    def check_unban(self, actor: str) -> None:
        if not self.is_moderator(actor):
            raise PermissionDenied("only a moderator of the channel may unban")

    def check_set_role(self, actor: str, user_id: str, role: str) -> None:
        if self.role(actor) != OWNER:
            raise PermissionDenied("only the channel's owner may change roles")
        if role not in (MODERATOR, MEMBER):
            raise InvalidArgument("role must be 'moderator' or 'member'")
        if user_id not in self.members:
            raise FailedPrecondition("that user is not a member of the channel")
        if user_id == actor:
            raise InvalidArgument("the owner keeps the owner role")

    def check_update(self, actor: str) -> None:
        self.require_member(actor)
        if not self.direct and not self.is_moderator(actor):
            raise PermissionDenied("only a moderator may rename the channel or change its topic")

    def earlier_send(self, sender_id: str, key: str) -> PostedMessage | None:
        """The message an earlier send with this key made; a retry returns it, unless the sender
        may no longer read it (sent before they last joined a channel that hides history)."""
        seq = self.sends.get((sender_id, key))
        if seq is None:
            return None
        if not self.view(sender_id).shows(seq):
            raise FailedPrecondition("this idempotency key was used before you joined the channel again; use a new one")
        return self.messages[seq].current

    def message(self, channel_seq: int) -> MessageRecord:
        record = self.messages.get(channel_seq)
        if record is None:
            raise NotFound(f"no message #{channel_seq} in this channel")
        return record

    def record_post(self, message: PostedMessage, idempotency_key: str) -> None:
        self.last_seq = message.channel_seq
        self.messages[message.channel_seq] = MessageRecord(message, [message.body])
        self.sends[(message.sender_id, idempotency_key)] = message.channel_seq
        if message.thread_root_seq and (root := self.messages.get(message.thread_root_seq)) is not None:
            root.replies.append(message.channel_seq)

    def forget_messages(self, channel_seqs: Iterable[int]) -> None:
        """Erased or expired messages go, as if never replayed; their numbers stay used."""
        gone = set(channel_seqs)
        for seq in gone:
            record = self.messages.pop(seq, None)
            root = self.messages.get(record.current.thread_root_seq) if record is not None else None
            if root is not None:
                root.replies = [r for r in root.replies if r != seq]
        self.sends = {send: seq for send, seq in self.sends.items() if seq not in gone}
        self.keep_number(*gone)

    def check_erasure(self, user_id: str, channel_seqs: Iterable[int]) -> None:
        """An erasure marks only the erased user's own posts. A number this projection no longer
        holds (deleted from the stream, a hole of a re-seeded log) or holds only as a redacted
        placeholder has no author to check."""
        others = sorted(
            seq
            for seq in channel_seqs
            if (record := self.messages.get(seq)) is not None and record.current.sender_id not in ("", user_id)
        )
        if others:
            raise FailedPrecondition(f"messages {others} of channel {self.channel_id} were not sent by {user_id}")

    def check_expiry(self, channel_seqs: Iterable[int], sent_before_ns: int) -> None:
        """Retention marks only messages sent before the policy's cutoff (its age is checked by
        storage_due against retention_days)."""
        recent = sorted(
            seq
            for seq in channel_seqs
            if (record := self.messages.get(seq)) is not None and record.current.sent_at_unix_ns >= sent_before_ns
        )
        if recent:
            raise FailedPrecondition(f"messages {recent} of channel {self.channel_id} are not older than the cutoff")

    def keep_number(self, *channel_seqs: int) -> None:
        """These numbers were used, whether or not their post is still in the stream: the next
        message is numbered after them (storage deletes redacted, expired and erased posts)."""
        self.last_seq = max(self.last_seq, *channel_seqs, 0)

    def record_redaction(self, channel_seq: int, message_id: str) -> None:
        """A redaction; of a post this projection never saw (deleted from the stream after its
        redaction) it leaves a redacted placeholder, so the number stays taken and shows redacted."""
        record = self.messages.get(channel_seq)
        if record is None:
            placeholder = PostedMessage(self.channel_id, message_id, "", "", channel_seq, "", 0, redacted=True)
            self.messages[channel_seq] = MessageRecord(placeholder, [])
            self.keep_number(channel_seq)
            return
        record.redacted()

    def check_thread_root(self, user_id: str, root_seq: int) -> None:
        """Replies hang off a thread's root: one level, as in most chat apps."""
        if root_seq and self.readable(user_id, root_seq).current.thread_root_seq:
            raise InvalidArgument(f"message #{root_seq} is itself a reply; reply to its thread's root instead")

    def read_seq(self, user_id: str) -> int:
        return max(self.read_up_to.get(user_id, 0), self.view(user_id).first_seq - 1)

    def unread_count(self, user_id: str) -> int:
        """Messages after the reader's marker that someone else sent."""
        return sum(
            1
            for seq in range(self.read_seq(user_id) + 1, self.last_seq + 1)
            if (record := self.messages.get(seq)) is not None and record.current.sender_id != user_id
        )

    def check_edit(self, user_id: str, channel_seq: int) -> MessageRecord:
        record = self.readable(user_id, channel_seq)
        if record.current.redacted:
            raise FailedPrecondition(f"message #{channel_seq} was redacted; it can no longer be edited")
        if record.current.sender_id != user_id:
            raise PermissionDenied("only the sender may edit a message")
        return record

    def check_redact(self, user_id: str, channel_seq: int) -> MessageRecord:
        record = self.readable(user_id, channel_seq)
        if record.current.sender_id != user_id and not self.is_moderator(user_id):
            raise PermissionDenied("only the sender or a moderator of the channel may redact a message")
        return record


# --- the one fold: how each event changes a channel ------------------------------------------


def _joined(channel: Channel, e: ev.MemberJoined, at: Recorded) -> None:
    channel.add_member(e.user_id, at.stream_seq)


def _left(channel: Channel, e: ev.MemberLeft | ev.MemberKicked, at: Recorded) -> None:
    channel.remove_member(e.user_id)


def _banned(channel: Channel, e: ev.MemberBanned, at: Recorded) -> None:
    channel.remove_member(e.user_id)
    channel.banned.add(e.user_id)
    channel.invited.pop(e.user_id, None)  # an unban needs a new invitation


def _unbanned(channel: Channel, e: ev.MemberUnbanned, at: Recorded) -> None:
    channel.banned.discard(e.user_id)


def _invited(channel: Channel, e: ev.MemberInvited, at: Recorded) -> None:
    channel.invite(e.user_id, e.invited_by, at.stream_seq)


def _declined(channel: Channel, e: ev.InvitationDeclined, at: Recorded) -> None:
    channel.invited.pop(e.user_id, None)


def _role_changed(channel: Channel, e: ev.MemberRoleChanged, at: Recorded) -> None:
    if e.role == MODERATOR:
        channel.roles[e.user_id] = MODERATOR
    else:
        channel.roles.pop(e.user_id, None)


def _renamed(channel: Channel, e: ev.ChannelRenamed, at: Recorded) -> None:
    channel.name = e.name


def _topic_changed(channel: Channel, e: ev.ChannelTopicChanged, at: Recorded) -> None:
    channel.topic = e.topic


def _retention_set(channel: Channel, e: ev.ChannelRetentionSet, at: Recorded) -> None:
    channel.retention_days = e.days


def _posted(channel: Channel, e: ev.MessagePosted, at: Recorded) -> None:
    posted = PostedMessage(
        channel_id=e.channel_id,
        message_id=e.message_id,
        sender_id=e.sender_id,
        sender_name=e.sender_name,
        channel_seq=e.channel_seq,
        body=e.body,
        sent_at_unix_ns=e.sent_at,
        thread_root_seq=e.thread_root_seq,
    )
    channel.record_post(posted, e.idempotency_key)


def _reacted(channel: Channel, e: ev.ReactionAdded | ev.ReactionRemoved, at: Recorded) -> None:
    # None: its post was deleted from the stream (erased, expired, redacted); the number stays taken.
    if (record := channel.messages.get(e.channel_seq)) is not None:
        record.react(e.emoji, e.user_id, remove=isinstance(e, ev.ReactionRemoved))
    channel.keep_number(e.channel_seq)


def _read(channel: Channel, e: ev.ReadMarkerMoved, at: Recorded) -> None:
    channel.read_up_to[e.user_id] = max(channel.read_up_to.get(e.user_id, 0), e.channel_seq)


def _edited(channel: Channel, e: ev.MessageEdited, at: Recorded) -> None:
    if (record := channel.messages.get(e.channel_seq)) is not None:
        record.edited(e.body)
    channel.keep_number(e.channel_seq)


def _redacted(channel: Channel, e: ev.MessageRedacted, at: Recorded) -> None:
    channel.record_redaction(e.channel_seq, e.message_id)


def _removed(channel: Channel, e: ev.MessagesErased | ev.MessagesExpired, at: Recorded) -> None:
    channel.forget_messages(e.channel_seqs)
    channel.markers.add(at.event_id)


def _created_again(channel: Channel, e: ev.ChannelCreated, at: Recorded) -> None:
    raise FailedPrecondition(f"channel {channel.channel_id} was created already")  # the directory starts channels


APPLY: dict[type[ev.ChannelEvent], Callable[[Channel, Any, Recorded], None]] = {
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
