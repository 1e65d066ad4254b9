"""What a channel holds: its members, roles, invitations, messages and numbering, and the
changes its events make to them. The fold (fold.py) makes those changes; the rules that decide
the events are the Channel aggregate's (domain.py)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from parley_core.errors import FailedPrecondition
from parley_core.visibility import HistoryView
from parley_messaging.messages import MessageRecord, PostedMessage

OWNER, MODERATOR, MEMBER = "owner", "moderator", "member"


@dataclass(frozen=True)
class Invitation:
    """A pending invitation: who invited, and the stream position of the invitation (its order)."""

    invited_by: str
    position: int = 0


@dataclass
class ChannelState:
    """A channel's fields and the changes its events make to them (fold.py); the rules that
    decide those events are Channel's (domain.py)."""

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

    def add_member(self, user_id: str, position: int = 0) -> None:
        """`user_id` joins by the event at stream `position` (0: not known, as in unit tests)."""
        self.members.add(user_id)
        self.invited.pop(user_id, None)  # joining accepts the invitation
        self.views[user_id] = HistoryView.at_join(
            hides_history=self.hide_history_before_join, newest_seq_at_join=self.last_seq, joined_at=position
        )

    def set_role(self, user_id: str, role: str) -> None:
        if role == MODERATOR:
            self.roles[user_id] = MODERATOR
        else:
            self.roles.pop(user_id, None)

    def remove_member(self, user_id: str) -> None:
        self.members.discard(user_id)
        self.roles.pop(user_id, None)

    def invite(self, user_id: str, invited_by: str, position: int = 0) -> None:
        self.invited[user_id] = Invitation(invited_by, position)

    def record_post(self, message: PostedMessage, idempotency_key: str) -> None:
        """A post takes the next free number. One whose number is taken already is refused (the
        projection halts on it): messaging never writes one, and applying it would overwrite the
        message there. A second copy of the same post (same message id) changes nothing."""
        if message.channel_seq <= self.last_seq:
            taken = self.messages.get(message.channel_seq)
            if taken is not None and taken.current.message_id == message.message_id:
                return
            raise FailedPrecondition(
                f"channel {self.channel_id}: message {message.message_id} claims number {message.channel_seq},"
                f" taken already (the channel is at {self.last_seq}); not applied over it"
            )
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
