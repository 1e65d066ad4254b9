"""The messaging service's composition: channel projection, commands and the gRPC servicer."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from parley.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from parley.messaging.v1.events_pb2 import (
    ChannelCreated,
    ChannelRenamed,
    ChannelRetentionSet,
    ChannelTopicChanged,
    InvitationDeclined,
    MemberBanned,
    MemberInvited,
    MemberJoined,
    MemberKicked,
    MemberLeft,
    MemberRoleChanged,
    MemberUnbanned,
    MessageEdited,
    MessagePosted,
    MessageRedacted,
    ReactionAdded,
    ReactionRemoved,
    ReadMarkerMoved,
)
from parley.storage.v1 import storage_pb2_grpc

from parley_core.bus import ConcurrencyConflict, DurableConsumer, ReceivedEvent, Replay
from parley_core.envelope import NewEvent
from parley_core.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted, Unavailable
from parley_core.runner import RunContext, peer_names
from parley_core.tokens import bearer_token
from parley_core.topology import AUTH_FILTER, CONSUMERS, MESSAGING_FILTER, PLATFORM_USER, channel_subject
from parley_messaging.device_service import DeviceKeyServicer
from parley_messaging.devices import AuthDirectory, validate_encrypted_body
from parley_messaging.domain import (
    Channel,
    MessageRecord,
    PostedMessage,
    created_channel_id,
    send_event_id,
    validate_body,
    validate_channel_name,
    validate_direct_members,
    validate_idempotency_key,
    validate_retention_days,
    validate_topic,
)
from parley_messaging.log_tail import ArchivedTail
from parley_messaging.projection import ChannelDirectory
from parley_messaging.reactions import reaction_emoji
from parley_messaging.settings import MessagingSettings
from parley_messaging.storage_due import StorageDue

APPEND_ATTEMPTS = 5
# A thread is read in pages: a thread's replies, however many and long, would otherwise make one
# answer bigger than the 4 MiB a gRPC client takes, and nobody could read that thread any more.
DEFAULT_THREAD_PAGE = 100
MAX_THREAD_PAGE = 500
MAX_THREAD_PAGE_BYTES = 2 * 1024 * 1024
# Facts storage recorded for messaging are acted on before it serves, for at most this long.
DUE_CATCH_UP_S = 30.0
MEMBER_ACTIONS_TAKE = "invite, kick, ban and unban take an existing user's id (the CLI also takes their name)"
log = logging.getLogger(__name__)
A = TypeVar("A", bound="Versioned | None")


def to_proto(message: PostedMessage, record: MessageRecord | None = None) -> messaging_pb2.ChatMessage:
    sent = Timestamp()
    sent.FromNanoseconds(message.sent_at_unix_ns)
    reactions = [
        messaging_pb2.ReactionCount(emoji=emoji, user_ids=sorted(users))
        for emoji, users in sorted((record.reactions if record else {}).items())
    ]
    return messaging_pb2.ChatMessage(
        channel_id=message.channel_id,
        message_id=message.message_id,
        sender_id=message.sender_id,
        sender_name=message.sender_name,
        channel_seq=message.channel_seq,
        body=message.body,
        sent_at=sent,
        redacted=message.redacted,
        edit_count=message.edit_count,
        thread_root_seq=message.thread_root_seq,
        reply_count=len(record.replies) if record else 0,
        reactions=reactions,
    )


def channel_proto(channel: Channel, viewer: str = "") -> messaging_pb2.Channel:
    return messaging_pb2.Channel(
        channel_id=channel.channel_id,
        name=channel.name,
        member_ids=sorted(channel.members),
        last_seq=channel.last_seq,
        encrypted=channel.encrypted,
        private=channel.private,
        direct=channel.direct,
        topic=channel.topic,
        roles={user: channel.role(user) for user in channel.members},
        hide_history_before_join=channel.hide_history_before_join,
        visible_from_seq=channel.view(viewer).first_seq,
        visible_from_position=channel.view(viewer).first_position,
        read_seq=channel.read_seq(viewer) if viewer in channel.members else 0,
        unread_count=channel.unread_count(viewer) if viewer in channel.members else 0,
    )


def _target(user_id: str) -> str:
    if not user_id or len(user_id) > 64:
        raise InvalidArgument("user_id is required (at most 64 characters)")
    return user_id


def _reason(reason: str) -> str:
    if len(reason) > 500:
        raise InvalidArgument("reason must be at most 500 characters")
    return reason


def body_for(channel: Channel, body: str) -> str:
    """Plain channels take text; encrypted ones only Megolm ciphertext, which the server cannot read."""
    return validate_encrypted_body(body) if channel.encrypted else validate_body(body)


class Versioned(Protocol):
    version: int
    last_stream_seq: int


class MessagingApp(messaging_pb2_grpc.MessagingServiceServicer):
    def __init__(self, settings: MessagingSettings | None = None) -> None:
        self.settings = settings or MessagingSettings()
        self.channels = ChannelDirectory()
        self.directory = AuthDirectory()
        self.device_keys = DeviceKeyServicer(self, self.directory)
        self._ctx: RunContext | None = None
        self._replay: Replay | None = None
        self._auth_replay: Replay | None = None
        self._due: DurableConsumer | None = None
        self.storage_due: StorageDue | None = None  # the checks on storage's due facts (its clock, for tests)
        # Before a channel's first change here: numbers deleted from the log's tail stay taken.
        self.log_tail = ArchivedTail(None)
        # One writer per aggregate (subject) inside this instance; see decide_and_append.
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def start(self, ctx: RunContext) -> None:
        self._ctx = ctx
        # Sends that posted a message (a retried send is not counted again): messages/s on the
        # console's Health page, and in /metrics.
        self._posted = ctx.metrics.counter(
            "parley_messages_posted", "Messages posted (a retried send counts once)", heartbeat=True
        )
        # Users and devices (auth owns them) first, then channels and to-device queues.
        self._auth_replay = await ctx.bus.replay(stream="AUTH", filter_subject=AUTH_FILTER, handler=self._apply_auth)
        await self._auth_replay.wait_caught_up()
        if ctx.settings.storage_addr:
            self.log_tail = ArchivedTail(
                storage_pb2_grpc.StorageArchiveServiceStub(ctx.channel_to(ctx.settings.storage_addr, "storage"))
            )
        self._replay = await ctx.bus.replay(stream="MSG", filter_subject=MESSAGING_FILTER, handler=self._apply)
        await self._replay.wait_caught_up()
        # The markers storage waits for (an erasure, retention) are on the channels before any
        # call can number a message: a restored folder's erasures are handed over this way.
        [due] = [c for c in CONSUMERS if c.service == "messaging"]
        self.storage_due = StorageDue(self)
        self._due = await ctx.bus.consume(due, self.storage_due.handle)
        if not await self._due.wait_drained(DUE_CATCH_UP_S):
            log.warning(
                "storage's due facts not all marked before serving; marking goes on", extra={"consumer": due.durable}
            )
        messaging_pb2_grpc.add_MessagingServiceServicer_to_server(self, ctx.server)
        ctx.add_service_name(messaging_pb2.DESCRIPTOR.services_by_name["MessagingService"].full_name)
        messaging_pb2_grpc.add_DeviceKeyServiceServicer_to_server(self.device_keys, ctx.server)
        ctx.add_service_name(messaging_pb2.DESCRIPTOR.services_by_name["DeviceKeyService"].full_name)

    @property
    def ctx(self) -> RunContext:
        assert self._ctx is not None
        return self._ctx

    async def stop(self) -> None:
        pass

    async def _apply_auth(self, event: ReceivedEvent) -> None:
        self.device_keys.apply_auth(event)

    async def settle_auth(self) -> None:
        """Catch up with auth's stream as it is now: a user or device created a moment ago is then known."""
        assert self._auth_replay is not None
        info = await self.ctx.bus.js.stream_info("AUTH")
        await self._auth_replay.wait_for_seq(info.state.last_seq)

    async def _require_users(
        self, user_ids: Sequence[str], what: str = "direct conversations take existing user ids"
    ) -> None:
        if not set(user_ids) <= self.directory.users:
            await self.settle_auth()
        unknown = [u for u in user_ids if u not in self.directory.users]
        if unknown:
            raise NotFound(f"no such user: {', '.join(unknown)}; {what}")

    async def _apply(self, event: ReceivedEvent) -> None:
        if event.envelope.aggregate_type in ("device", "todevice"):
            self.device_keys.apply(event)
            return
        if event.envelope.aggregate_type == "channel":
            self.channels.apply_envelope(event.envelope, event.stream_seq)

    async def _append(self, event: NewEvent, *, after: Channel | None) -> None:
        """Append to a channel as it was read (`after`), or create it (`after=None`)."""
        await self.append_to(channel_subject(event.aggregate_id), event, after)

    async def append_to(self, subject: str, event: NewEvent, after: Versioned | None) -> None:
        """Append to an aggregate as it was read (None: a new one), then read our own write: applied
        to the projection as soon as the stream acknowledged it, not after a trip through the replay."""
        assert self._ctx is not None
        assert self._replay is not None
        appended = await self._ctx.bus.append(
            subject,
            event,
            aggregate_version=after.version + 1 if after else 1,
            expected_last_subject_seq=after.last_stream_seq if after else 0,
        )
        await self._replay.apply_own(appended)

    async def append_unchecked(self, subject: str, event: NewEvent) -> None:
        """Append after whatever the subject holds (an aggregate this projection does not know),
        then read our own write."""
        assert self._replay is not None
        await self._replay.wait_for_seq(await self.ctx.bus.append_after_last(subject, event))

    async def settle(self, subject: str) -> None:
        """After a lost race, let the projection catch up with the aggregate before deciding again."""
        assert self._ctx is not None
        assert self._replay is not None
        await self._replay.wait_for_seq(await self._ctx.bus.last_subject_seq("MSG", subject))

    async def CreateChannel(
        self, request: messaging_pb2.CreateChannelRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> messaging_pb2.Channel:
        assert self._ctx is not None
        caller = self._ctx.tokens.caller(context)
        name = validate_channel_name(request.name)
        channel_id = created_channel_id(caller.user_id, validate_idempotency_key(request.idempotency_key))
        payload = ChannelCreated(
            channel_id=channel_id,
            name=name,
            creator_id=caller.user_id,
            encrypted=request.encrypted,
            private=request.private,
            hide_history_before_join=request.hide_history_before_join,
        )
        return channel_proto(await self._create_once(channel_id, payload, caller.user_id), caller.user_id)

    async def _create_once(self, channel_id: str, payload: ChannelCreated, creator_id: str) -> Channel:
        """Create the channel unless a call with the same key did: then the first one stands."""
        if channel_id not in self.channels:
            event = NewEvent(
                aggregate_type="channel",
                aggregate_id=channel_id,
                payload=payload,
                actor=creator_id,
                event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"parley:channel-created/{channel_id}").hex,
            )
            try:
                await self._append(event, after=None)
            except ConcurrencyConflict:
                await self.settle(channel_subject(channel_id))  # created by the first call, then changed
        return self.channels.get(channel_id)

    async def JoinChannel(
        self, request: messaging_pb2.JoinChannelRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> messaging_pb2.Channel:
        assert self._ctx is not None
        caller = self._ctx.tokens.caller(context)

        def decide(channel: Channel) -> NewEvent | None:
            if caller.user_id in channel.members:
                return None  # already in: a retried join
            channel.check_join(caller.user_id)
            return self._event(
                channel, caller.user_id, MemberJoined(channel_id=channel.channel_id, user_id=caller.user_id)
            )

        channel_id = request.channel_id or self.channels.named_for(request.name, caller.user_id).channel_id
        return await self._decide_on_channel(channel_id, caller.user_id, decide)

    async def ListMyChannels(
        self, request: messaging_pb2.ListMyChannelsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> messaging_pb2.ListMyChannelsResponse:
        assert self._ctx is not None
        caller = self._ctx.tokens.caller(context)
        channels = sorted(self.channels.of_member(caller.user_id), key=lambda c: c.name)
        return messaging_pb2.ListMyChannelsResponse(channels=[channel_proto(c, caller.user_id) for c in channels])

    async def ListInvitations(
        self, request: messaging_pb2.ListInvitationsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> messaging_pb2.ListInvitationsResponse:
        """The caller's own invitations only: there is no asking about someone else's."""
        assert self._ctx is not None
        caller = self._ctx.tokens.caller(context)
        return messaging_pb2.ListInvitationsResponse(
            invitations=[
                messaging_pb2.Invitation(
                    channel_id=c.channel_id,
                    channel_name=c.name,
                    invited_by=invitation.invited_by,
                    private=c.private,
                    encrypted=c.encrypted,
                    member_count=len(c.members),
                    topic=c.topic,
                )
                for c, invitation in self.channels.invitations_of(caller.user_id)
            ]
        )

    async def DeclineInvitation(
        self, request: messaging_pb2.DeclineInvitationRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> messaging_pb2.DeclineInvitationResponse:
        assert self._ctx is not None
        actor = self._ctx.tokens.caller(context).user_id
        if not request.channel_id:
            raise InvalidArgument("channel_id is required")
        if request.channel_id not in self.channels:
            raise NotFound("you have no pending invitation to this channel")  # as for a channel that exists

        def decide(channel: Channel) -> NewEvent | None:
            channel.check_decline(actor)
            return self._event(channel, actor, InvitationDeclined(channel_id=channel.channel_id, user_id=actor))

        await self._on_channel(request.channel_id, decide)
        return messaging_pb2.DeclineInvitationResponse()

    async def PostMessage(
        self, request: messaging_pb2.PostMessageRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> messaging_pb2.ChatMessage:
        assert self._ctx is not None
        caller = self._ctx.tokens.caller(context)
        key = validate_idempotency_key(request.idempotency_key)
        posting = False  # whether the last decision (the one appended, or not) was a new post

        def decide(channel: Channel) -> NewEvent | None:
            nonlocal posting
            posting = False
            channel.require_member(caller.user_id)
            body = body_for(channel, request.body)
            channel.check_thread_root(caller.user_id, request.thread_root_seq)
            if channel.earlier_send(caller.user_id, key) is not None:
                return None  # a retried send: the first result stands
            posting = True
            sent = Timestamp()
            sent.GetCurrentTime()
            return NewEvent(
                aggregate_type="channel",
                aggregate_id=channel.channel_id,
                payload=MessagePosted(
                    channel_id=channel.channel_id,
                    message_id=uuid.uuid4().hex,
                    sender_id=caller.user_id,
                    sender_name=caller.username,
                    channel_seq=channel.last_seq + 1,
                    body=body,
                    idempotency_key=key,
                    sent_at=sent,
                    thread_root_seq=request.thread_root_seq,
                ),
                actor=caller.user_id,
                event_id=send_event_id(channel.channel_id, caller.user_id, key),
            )

        channel = await self._on_channel(request.channel_id, decide)
        if posting:
            self._posted.inc()
        posted = channel.earlier_send(caller.user_id, key)
        assert posted is not None
        return to_proto(posted)

    async def _change_message(
        self, channel_id: str, channel_seq: int, decide: Callable[[Channel], NewEvent | None]
    ) -> messaging_pb2.ChatMessage:
        if channel_seq <= 0:
            raise InvalidArgument("channel_id and channel_seq (>= 1) are required")
        channel = await self._on_channel(channel_id, decide)
        return to_proto(channel.message(channel_seq).current)

    async def EditMessage(
        self, request: messaging_pb2.EditMessageRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> messaging_pb2.ChatMessage:
        assert self._ctx is not None
        caller = self._ctx.tokens.caller(context)
        max_edits = self.settings.max_edits_per_message

        def decide(channel: Channel) -> NewEvent | None:
            record = channel.check_edit(caller.user_id, request.channel_seq)
            body = body_for(channel, request.body)
            if record.current.body == body:
                return None  # a retried edit: already the text
            if record.current.edit_count >= max_edits:
                raise ResourceExhausted(
                    f"message #{request.channel_seq} was edited {record.current.edit_count} times, the most a message"
                    " may be; send a new message instead"
                )
            edited = Timestamp()
            edited.GetCurrentTime()
            payload = MessageEdited(
                channel_id=channel.channel_id,
                message_id=record.current.message_id,
                channel_seq=request.channel_seq,
                body=body,
                editor_id=caller.user_id,
                editor_name=caller.username,
                edited_at=edited,
            )
            return self._event(channel, caller.user_id, payload)

        return await self._change_message(request.channel_id, request.channel_seq, decide)

    async def RedactMessage(
        self, request: messaging_pb2.RedactMessageRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> messaging_pb2.ChatMessage:
        assert self._ctx is not None
        caller = self._ctx.tokens.caller(context)
        if len(request.reason) > 500:
            raise InvalidArgument("reason must be at most 500 characters")

        def decide(channel: Channel) -> NewEvent | None:
            record = channel.check_redact(caller.user_id, request.channel_seq)
            if record.current.redacted:
                return None  # redacting twice changes nothing
            redacted = Timestamp()
            redacted.GetCurrentTime()
            payload = MessageRedacted(
                channel_id=channel.channel_id,
                message_id=record.current.message_id,
                channel_seq=request.channel_seq,
                redactor_id=caller.user_id,
                reason=request.reason,
                redacted_at=redacted,
            )
            return self._event(channel, caller.user_id, payload)

        return await self._change_message(request.channel_id, request.channel_seq, decide)

    async def LeaveChannel(
        self, request: messaging_pb2.LeaveChannelRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> messaging_pb2.Channel:
        assert self._ctx is not None
        caller = self._ctx.tokens.caller(context)

        def decide(channel: Channel) -> NewEvent | None:
            if caller.user_id not in channel.members:
                return None  # already gone: a retried leave
            return self._event(
                channel, caller.user_id, MemberLeft(channel_id=channel.channel_id, user_id=caller.user_id)
            )

        return await self._decide_on_channel(request.channel_id, "", decide)

    async def decide_and_append(self, subject: str, read: Callable[[], A], decide: Callable[[A], NewEvent | None]) -> A:
        """The one way a command changes an aggregate: read it, let `decide` make the event (None:
        nothing to do, e.g. a retry), append at the version read, and return the aggregate after.

        One writer per aggregate inside this instance; across instances the stream's expected
        sequence settles races: the loser catches up and decides again.
        """
        async with self._locks[subject]:
            for _ in range(APPEND_ATTEMPTS):
                aggregate = read()
                event = decide(aggregate)
                if event is None:
                    return aggregate
                try:
                    await self.append_to(subject, event, aggregate)
                except ConcurrencyConflict:
                    await self.settle(subject)
                    continue
                return read()
        raise Unavailable("this is changing too fast; try again")

    async def _on_channel(self, channel_id: str, decide: Callable[[Channel], NewEvent | None]) -> Channel:
        if not channel_id:
            raise InvalidArgument("channel_id is required")
        await self.log_tail.check(self.channels.get(channel_id))
        return await self.decide_and_append(channel_subject(channel_id), lambda: self.channels.get(channel_id), decide)

    async def _decide_on_channel(
        self, channel_id: str, viewer: str, decide: Callable[[Channel], NewEvent | None]
    ) -> messaging_pb2.Channel:
        return channel_proto(await self._on_channel(channel_id, decide), viewer)

    def _event(self, channel: Channel, actor: str, payload: Message) -> NewEvent:
        return NewEvent(aggregate_type="channel", aggregate_id=channel.channel_id, payload=payload, actor=actor)

    async def CreateDirectChannel(
        self, request: messaging_pb2.CreateDirectChannelRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> messaging_pb2.Channel:
        assert self._ctx is not None
        caller = self._ctx.tokens.caller(context)
        others = validate_direct_members(caller.user_id, list(request.user_ids))
        await self._require_users(others)
        channel_id = created_channel_id(caller.user_id, validate_idempotency_key(request.idempotency_key))
        payload = ChannelCreated(
            channel_id=channel_id,
            name="direct",
            creator_id=caller.user_id,
            encrypted=request.encrypted,
            private=True,
            direct=True,
            member_ids=others,
        )
        return channel_proto(await self._create_once(channel_id, payload, caller.user_id), caller.user_id)

    async def InviteMember(
        self, request: messaging_pb2.MemberActionRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> messaging_pb2.Channel:
        assert self._ctx is not None
        actor = self._ctx.tokens.caller(context).user_id
        user_id = _target(request.user_id)
        await self._require_users([user_id], MEMBER_ACTIONS_TAKE)

        def decide(channel: Channel) -> NewEvent | None:
            channel.check_invite(actor, user_id)
            if user_id in channel.members or channel.pending_invitation(user_id) is not None:
                return None
            payload = MemberInvited(channel_id=channel.channel_id, user_id=user_id, invited_by=actor)
            return self._event(channel, actor, payload)

        return await self._decide_on_channel(request.channel_id, actor, decide)

    async def KickMember(
        self, request: messaging_pb2.MemberActionRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> messaging_pb2.Channel:
        assert self._ctx is not None
        actor = self._ctx.tokens.caller(context).user_id
        user_id = _target(request.user_id)
        await self._require_users([user_id], MEMBER_ACTIONS_TAKE)
        reason = _reason(request.reason)

        def decide(channel: Channel) -> NewEvent | None:
            channel.check_remove(actor, user_id)
            if user_id not in channel.members:
                return None
            payload = MemberKicked(channel_id=channel.channel_id, user_id=user_id, kicked_by=actor, reason=reason)
            return self._event(channel, actor, payload)

        return await self._decide_on_channel(request.channel_id, actor, decide)

    async def BanMember(
        self, request: messaging_pb2.MemberActionRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> messaging_pb2.Channel:
        assert self._ctx is not None
        actor = self._ctx.tokens.caller(context).user_id
        user_id = _target(request.user_id)
        await self._require_users([user_id], MEMBER_ACTIONS_TAKE)
        reason = _reason(request.reason)

        def decide(channel: Channel) -> NewEvent | None:
            channel.check_remove(actor, user_id)
            if user_id in channel.banned:
                return None
            payload = MemberBanned(channel_id=channel.channel_id, user_id=user_id, banned_by=actor, reason=reason)
            return self._event(channel, actor, payload)

        return await self._decide_on_channel(request.channel_id, actor, decide)

    async def UnbanMember(
        self, request: messaging_pb2.MemberActionRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> messaging_pb2.Channel:
        assert self._ctx is not None
        actor = self._ctx.tokens.caller(context).user_id
        user_id = _target(request.user_id)
        await self._require_users([user_id], MEMBER_ACTIONS_TAKE)

        def decide(channel: Channel) -> NewEvent | None:
            channel.check_unban(actor)
            if user_id not in channel.banned:
                return None
            payload = MemberUnbanned(channel_id=channel.channel_id, user_id=user_id, unbanned_by=actor)
            return self._event(channel, actor, payload)

        return await self._decide_on_channel(request.channel_id, actor, decide)

    async def SetMemberRole(
        self, request: messaging_pb2.SetMemberRoleRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> messaging_pb2.Channel:
        assert self._ctx is not None
        actor = self._ctx.tokens.caller(context).user_id
        user_id = _target(request.user_id)

        def decide(channel: Channel) -> NewEvent | None:
            channel.check_set_role(actor, user_id, request.role)
            if channel.role(user_id) == request.role:
                return None
            payload = MemberRoleChanged(
                channel_id=channel.channel_id, user_id=user_id, role=request.role, changed_by=actor
            )
            return self._event(channel, actor, payload)

        return await self._decide_on_channel(request.channel_id, actor, decide)

    async def UpdateChannel(
        self, request: messaging_pb2.UpdateChannelRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> messaging_pb2.Channel:
        assert self._ctx is not None
        actor = self._ctx.tokens.caller(context).user_id
        has_name, has_topic = request.HasField("name"), request.HasField("topic")
        if has_name == has_topic:
            raise InvalidArgument("give exactly one of name or topic")
        value = validate_channel_name(request.name) if has_name else validate_topic(request.topic)

        def decide(channel: Channel) -> NewEvent | None:
            channel.check_update(actor)
            if (channel.name if has_name else channel.topic) == value:
                return None
            payload: Message = (
                ChannelRenamed(channel_id=channel.channel_id, name=value, renamed_by=actor)
                if has_name
                else ChannelTopicChanged(channel_id=channel.channel_id, topic=value, changed_by=actor)
            )
            return self._event(channel, actor, payload)

        return await self._decide_on_channel(request.channel_id, actor, decide)

    async def SetChannelRetention(
        self, request: messaging_pb2.SetChannelRetentionRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> messaging_pb2.SetChannelRetentionResponse:
        """The operator's (or a `retention.manage` holder's) policy, recorded on the channel
        before storage expires anything by it: storage's expiry facts are checked against it."""
        actor = self._caller_or_platform(context)
        days = validate_retention_days(request.days)

        def decide(channel: Channel) -> NewEvent | None:
            if channel.retention_days == days:
                return None  # already so: a retry records nothing twice
            return self._event(
                channel, actor, ChannelRetentionSet(channel_id=channel.channel_id, days=days, set_by=actor)
            )

        await self._on_channel(request.channel_id, decide)
        return messaging_pb2.SetChannelRetentionResponse(days=days, set_by=actor)

    def _caller_or_platform(self, context: grpc.aio.ServicerContext[object, object]) -> str:
        """The acting user's id, or "platform" for the operator's tooling (its certificate, no
        token); the interceptor let only these through (rbac.PLATFORM_METHODS)."""
        if bearer_token(context) is None and PLATFORM_USER in peer_names(context):
            return PLATFORM_USER
        return self.ctx.tokens.caller(context).user_id

    async def ListThread(
        self, request: messaging_pb2.ListThreadRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> messaging_pb2.ListThreadResponse:
        assert self._ctx is not None
        caller = self._ctx.tokens.caller(context)
        channel = self.channels.get(request.channel_id)
        if request.limit > MAX_THREAD_PAGE:
            raise InvalidArgument(f"limit must be at most {MAX_THREAD_PAGE} (0 means {DEFAULT_THREAD_PAGE})")
        root = channel.readable(caller.user_id, request.root_seq)
        view = channel.view(caller.user_id)
        later = [seq for seq in root.replies if seq > request.after_seq and view.shows(seq)]
        page = messaging_pb2.ListThreadResponse(root=to_proto(root.current, root))
        size = page.ByteSize()
        for seq in later[: request.limit or DEFAULT_THREAD_PAGE]:
            reply = to_proto(channel.messages[seq].current, channel.messages[seq])
            size += reply.ByteSize()
            if size > MAX_THREAD_PAGE_BYTES and page.replies:
                break
            page.replies.append(reply)
        page.has_more = len(page.replies) < len(later)
        return page

    async def React(
        self, request: messaging_pb2.ReactRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> messaging_pb2.ChatMessage:
        assert self._ctx is not None
        actor = self._ctx.tokens.caller(context).user_id
        limits = self.settings.reaction_limits

        def decide(channel: Channel) -> NewEvent | None:
            record = channel.readable(actor, request.channel_seq)
            # Taking back a reaction takes its text as stored (one added before emoji were checked too).
            stored = request.remove and actor in record.reactions.get(request.emoji, set())
            emoji = request.emoji if stored else reaction_emoji(request.emoji)
            if (actor in record.reactions.get(emoji, set())) != request.remove:
                return None  # already as asked: a retried reaction
            if not request.remove:
                limits.check_add(record.reactions, emoji, actor, request.channel_seq)
            kind = ReactionRemoved if request.remove else ReactionAdded
            payload = kind(channel_id=channel.channel_id, channel_seq=request.channel_seq, user_id=actor, emoji=emoji)
            return self._event(channel, actor, payload)

        await self._decide_on_channel(request.channel_id, actor, decide)
        record = self.channels.get(request.channel_id).message(request.channel_seq)
        return to_proto(record.current, record)

    async def MarkRead(
        self, request: messaging_pb2.MarkReadRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> messaging_pb2.Channel:
        assert self._ctx is not None
        actor = self._ctx.tokens.caller(context).user_id

        def decide(channel: Channel) -> NewEvent | None:
            channel.require_member(actor)
            if request.channel_seq > channel.last_seq:
                raise InvalidArgument(f"the channel's newest message is #{channel.last_seq}")
            if request.channel_seq <= channel.read_up_to.get(actor, 0):
                return None  # read markers only move forward
            payload = ReadMarkerMoved(channel_id=channel.channel_id, user_id=actor, channel_seq=request.channel_seq)
            return self._event(channel, actor, payload)

        return await self._decide_on_channel(request.channel_id, actor, decide)

    async def ListMessageVersions(
        self, request: messaging_pb2.ListMessageVersionsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> messaging_pb2.ListMessageVersionsResponse:
        assert self._ctx is not None
        caller = self._ctx.tokens.caller(context)
        channel = self.channels.get(request.channel_id)
        if not channel.is_moderator(caller.user_id):
            raise PermissionDenied("only a moderator of the channel may see earlier versions of a message")
        record = channel.readable(caller.user_id, request.channel_seq)
        return messaging_pb2.ListMessageVersionsResponse(bodies=record.versions)
