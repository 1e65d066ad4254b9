"""Channels: membership, the per-channel message order and idempotent sends, without I/O.

`Channel` is the aggregate: `Channel.created` starts one from its `ChannelCreated`, and
`Channel.apply` folds every later event through one table (fold.APPLY, keyed by event type) into
what the channel holds (channel_state.py). The `check_*` rules say whether someone may act;
`decisions` turns commands into events with them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from parley_core.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from parley_core.visibility import EVERYTHING, HistoryView
from parley_messaging import events as ev
from parley_messaging.channel_state import MEMBER, MODERATOR, OWNER, ChannelState, Invitation
from parley_messaging.fold import APPLY, NOWHERE, Recorded
from parley_messaging.messages import MessageRecord, PostedMessage


@dataclass
class Channel(ChannelState):
    """The channel aggregate: what it holds, with its rules and its fold."""

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

    def check_thread_root(self, user_id: str, root_seq: int) -> None:
        """Replies hang off a thread's root: one level, as in most chat apps."""
        if root_seq and self.readable(user_id, root_seq).current.thread_root_seq:
            raise InvalidArgument(f"message #{root_seq} is itself a reply; reply to its thread's root instead")

    def read_seq(self, user_id: str) -> int:
        return max(self.read_up_to.get(user_id, 0), self.view(user_id).first_seq - 1)

    def unread_count(self, user_id: str) -> int:
        """Messages after the reader's marker that someone else sent. The work is bounded by the
        messages held, not by the span of numbers: numbering may jump (retention, erasure, a
        forged post numbered 10**9), so a short span is walked by number, a long one by message."""
        read = self.read_seq(user_id)
        if self.last_seq - read <= len(self.messages):
            after_read = ((seq, self.messages.get(seq)) for seq in range(read + 1, self.last_seq + 1))
        else:
            after_read = ((seq, record) for seq, record in self.messages.items() if seq > read)
        return sum(1 for _, record in after_read if record is not None and record.current.sender_id != user_id)

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
