"""What each command does to a channel: pure `decide(channel, command) -> (events, result)`.

No protobuf, no clock, no I/O: the servicer (service.py) turns a request into a command (with
the time and a new message id in it), reads the channel, decides, and appends what was decided
(parley_core.event_log.EventLog.decide_and_append). A decision raises a domain error when the command may not be
done, and decides no event when there is nothing left to do: a retried command changes nothing.
A command decides at most one event (appended at the version it was decided on).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from parley_core.errors import InvalidArgument, ResourceExhausted
from parley_messaging import events as ev
from parley_messaging.devices import validate_encrypted_body
from parley_messaging.domain import Channel
from parley_messaging.inputs import validate_body
from parley_messaging.messages import PostedMessage
from parley_messaging.reactions import ReactionLimits, reaction_emoji

Events = tuple[ev.ChannelEvent, ...]
Decision = tuple[Events, Any]
NOTHING: Decision = ((), None)


# ---- commands (imperative) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateChannel:
    channel_id: str
    name: str
    creator_id: str
    encrypted: bool = False
    private: bool = False
    direct: bool = False
    member_ids: tuple[str, ...] = ()
    hide_history_before_join: bool = False


@dataclass(frozen=True, slots=True)
class JoinChannel:
    user_id: str


@dataclass(frozen=True, slots=True)
class LeaveChannel:
    user_id: str


@dataclass(frozen=True, slots=True)
class InviteMember:
    actor: str
    user_id: str


@dataclass(frozen=True, slots=True)
class DeclineInvitation:
    user_id: str


@dataclass(frozen=True, slots=True)
class KickMember:
    actor: str
    user_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class BanMember:
    actor: str
    user_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class UnbanMember:
    actor: str
    user_id: str


@dataclass(frozen=True, slots=True)
class SetMemberRole:
    actor: str
    user_id: str
    role: str


@dataclass(frozen=True, slots=True)
class RenameChannel:
    actor: str
    name: str  # validated (domain.validate_channel_name)


@dataclass(frozen=True, slots=True)
class ChangeTopic:
    actor: str
    topic: str  # validated (domain.validate_topic)


@dataclass(frozen=True, slots=True)
class SetRetention:
    actor: str  # a user id, or "platform" for the operator's tooling
    days: int  # validated (domain.validate_retention_days)


@dataclass(frozen=True, slots=True)
class PostMessage:
    sender_id: str
    sender_name: str
    body: str
    idempotency_key: str  # validated; the same key again is a retry
    message_id: str  # the new message's id, should this be a new post
    at_ns: int
    thread_root_seq: int = 0


@dataclass(frozen=True, slots=True)
class EditMessage:
    editor_id: str
    editor_name: str
    channel_seq: int
    body: str
    at_ns: int
    max_edits: int


@dataclass(frozen=True, slots=True)
class RedactMessage:
    actor: str
    channel_seq: int
    at_ns: int
    reason: str = ""  # validated (at most 500 characters)


@dataclass(frozen=True, slots=True)
class React:
    user_id: str
    channel_seq: int
    emoji: str
    remove: bool
    limits: ReactionLimits


@dataclass(frozen=True, slots=True)
class MarkRead:
    user_id: str
    channel_seq: int


# ---- decisions -------------------------------------------------------------------------------


def create(existing: Channel | None, c: CreateChannel) -> Decision:
    """A creation with the same id (the same creator and key) finds the first one standing."""
    if existing is not None:
        return NOTHING
    created = ev.ChannelCreated(
        c.channel_id, c.name, c.creator_id, c.encrypted, c.private, c.direct, c.member_ids, c.hide_history_before_join
    )
    return (created,), None


def join(channel: Channel, c: JoinChannel) -> Decision:
    if c.user_id in channel.members:
        return NOTHING  # already in: a retried join
    channel.check_join(c.user_id)
    return (ev.MemberJoined(channel.channel_id, c.user_id),), None


def leave(channel: Channel, c: LeaveChannel) -> Decision:
    if c.user_id not in channel.members:
        return NOTHING  # already gone: a retried leave
    return (ev.MemberLeft(channel.channel_id, c.user_id),), None


def invite(channel: Channel, c: InviteMember) -> Decision:
    channel.check_invite(c.actor, c.user_id)
    if c.user_id in channel.members or channel.pending_invitation(c.user_id) is not None:
        return NOTHING
    return (ev.MemberInvited(channel.channel_id, c.user_id, c.actor),), None


def decline(channel: Channel, c: DeclineInvitation) -> Decision:
    channel.check_decline(c.user_id)
    return (ev.InvitationDeclined(channel.channel_id, c.user_id),), None


def kick(channel: Channel, c: KickMember) -> Decision:
    channel.check_remove(c.actor, c.user_id)
    if c.user_id not in channel.members:
        return NOTHING
    return (ev.MemberKicked(channel.channel_id, c.user_id, c.actor, c.reason),), None


def ban(channel: Channel, c: BanMember) -> Decision:
    channel.check_remove(c.actor, c.user_id)
    if c.user_id in channel.banned:
        return NOTHING
    return (ev.MemberBanned(channel.channel_id, c.user_id, c.actor, c.reason),), None


def unban(channel: Channel, c: UnbanMember) -> Decision:
    channel.check_unban(c.actor)
    if c.user_id not in channel.banned:
        return NOTHING
    return (ev.MemberUnbanned(channel.channel_id, c.user_id, c.actor),), None


def set_role(channel: Channel, c: SetMemberRole) -> Decision:
    channel.check_set_role(c.actor, c.user_id, c.role)
    if channel.role(c.user_id) == c.role:
        return NOTHING
    return (ev.MemberRoleChanged(channel.channel_id, c.user_id, c.role, c.actor),), None


def rename(channel: Channel, c: RenameChannel) -> Decision:
    channel.check_update(c.actor)
    if channel.name == c.name:
        return NOTHING
    return (ev.ChannelRenamed(channel.channel_id, c.name, c.actor),), None


def change_topic(channel: Channel, c: ChangeTopic) -> Decision:
    channel.check_update(c.actor)
    if channel.topic == c.topic:
        return NOTHING
    return (ev.ChannelTopicChanged(channel.channel_id, c.topic, c.actor),), None


def set_retention(channel: Channel, c: SetRetention) -> Decision:
    """Who may is the interceptor's (rbac: the operator, or a `retention.manage` holder)."""
    if channel.retention_days == c.days:
        return NOTHING  # already so: a retry records nothing twice
    return (ev.ChannelRetentionSet(channel.channel_id, c.days, c.actor),), None


def body_for(channel: Channel, body: str) -> str:
    """Plain channels take text; encrypted ones only Megolm ciphertext, which the server cannot read."""
    return validate_encrypted_body(body) if channel.encrypted else validate_body(body)


def post(channel: Channel, c: PostMessage) -> Decision:
    """The result: the message an earlier send with the same key made (None: a new post)."""
    channel.require_member(c.sender_id)
    body = body_for(channel, c.body)
    channel.check_thread_root(c.sender_id, c.thread_root_seq)
    earlier: PostedMessage | None = channel.earlier_send(c.sender_id, c.idempotency_key)
    if earlier is not None:
        return (), earlier  # a retried send: the first result stands
    posted = ev.MessagePosted(
        channel.channel_id,
        c.message_id,
        c.sender_id,
        channel.last_seq + 1,
        body,
        c.idempotency_key,
        c.at_ns,
        c.sender_name,
        c.thread_root_seq,
    )
    return (posted,), None


def edit(channel: Channel, c: EditMessage) -> Decision:
    record = channel.check_edit(c.editor_id, c.channel_seq)
    body = body_for(channel, c.body)
    if record.current.body == body:
        return NOTHING  # a retried edit: already the text
    if record.current.edit_count >= c.max_edits:
        raise ResourceExhausted(
            f"message #{c.channel_seq} was edited {record.current.edit_count} times, the most a message"
            " may be; send a new message instead"
        )
    edited = ev.MessageEdited(
        channel.channel_id, record.current.message_id, c.channel_seq, body, c.editor_id, c.at_ns, c.editor_name
    )
    return (edited,), None


def redact(channel: Channel, c: RedactMessage) -> Decision:
    record = channel.check_redact(c.actor, c.channel_seq)
    if record.current.redacted:
        return NOTHING  # redacting twice changes nothing
    redacted = ev.MessageRedacted(
        channel.channel_id, record.current.message_id, c.channel_seq, c.actor, c.reason, c.at_ns
    )
    return (redacted,), None


def react(channel: Channel, c: React) -> Decision:
    record = channel.readable(c.user_id, c.channel_seq)
    # Taking back a reaction takes its text as stored (one added before emoji were checked too).
    stored = c.remove and c.user_id in record.reactions.get(c.emoji, set())
    emoji = c.emoji if stored else reaction_emoji(c.emoji)
    if (c.user_id in record.reactions.get(emoji, set())) != c.remove:
        return NOTHING  # already as asked: a retried reaction
    if c.remove:
        return (ev.ReactionRemoved(channel.channel_id, c.channel_seq, c.user_id, emoji),), None
    c.limits.check_add(record.reactions, emoji, c.user_id, c.channel_seq)
    return (ev.ReactionAdded(channel.channel_id, c.channel_seq, c.user_id, emoji),), None


def mark_read(channel: Channel, c: MarkRead) -> Decision:
    channel.require_member(c.user_id)
    if c.channel_seq > channel.last_seq:
        raise InvalidArgument(f"the channel's newest message is #{channel.last_seq}")
    if c.channel_seq <= channel.read_up_to.get(c.user_id, 0):
        return NOTHING  # read markers only move forward
    return (ev.ReadMarkerMoved(channel.channel_id, c.user_id, c.channel_seq),), None


# The one dispatch from a command on an existing channel to its decision (creation is `create`).
DECIDE: dict[type, Callable[[Channel, Any], Decision]] = {
    JoinChannel: join,
    LeaveChannel: leave,
    InviteMember: invite,
    DeclineInvitation: decline,
    KickMember: kick,
    BanMember: ban,
    UnbanMember: unban,
    SetMemberRole: set_role,
    RenameChannel: rename,
    ChangeTopic: change_topic,
    SetRetention: set_retention,
    PostMessage: post,
    EditMessage: edit,
    RedactMessage: redact,
    React: react,
    MarkRead: mark_read,
}


def decide(channel: Channel, command: object) -> Decision:
    return DECIDE[type(command)](channel, command)
