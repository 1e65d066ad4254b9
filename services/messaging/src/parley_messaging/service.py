"""The messaging service's composition and gRPC servicer: a request becomes a command, the
channel is read from the projection, `decisions` decides, the event log appends, and the answer
is made from the channel after (answers.py). No rule of the channel lives here."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from parley.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from parley.storage.v1 import storage_pb2_grpc

from parley_core.bus import ConcurrencyConflict, DurableConsumer, ReceivedEvent, Replay
from parley_core.envelope import NewEvent
from parley_core.errors import InvalidArgument, NotFound
from parley_core.run_context import RunContext
from parley_core.server_interceptors import peer_names
from parley_core.tokens import bearer_token
from parley_core.topology import AUTH_FILTER, CONSUMERS, MESSAGING_FILTER, PLATFORM_USER, channel_subject
from parley_messaging import decisions as cmd
from parley_messaging.answers import channel_proto, invitations_proto, thread_page, to_proto
from parley_messaging.codec import new_event
from parley_messaging.device_projection import DeviceRelay
from parley_messaging.device_service import DeviceKeyServicer
from parley_messaging.devices import AuthDirectory
from parley_messaging.domain import Channel
from parley_messaging.event_log import MessagingLog
from parley_messaging.inputs import (
    CHANNEL_ID,
    created_channel_id,
    validate_channel_name,
    validate_direct_members,
    validate_idempotency_key,
    validate_retention_days,
    validate_topic,
)
from parley_messaging.log_tail import ArchivedTail
from parley_messaging.projection import ChannelDirectory
from parley_messaging.settings import MessagingSettings
from parley_messaging.storage_due import StorageDue

# Facts storage recorded for messaging are acted on before it serves, for at most this long.
DUE_CATCH_UP_S = 30.0


def _now_ns() -> int:
    """Now, to the microsecond: a client's datetime holds no more, so a message's time read back
    and given as `after_time` must not find the message itself again (protobuf's GetCurrentTime
    kept microseconds too)."""
    return time.time_ns() // 1000 * 1000


MEMBER_ACTIONS_TAKE = "invite, kick, ban and unban take an existing user's id (the CLI also takes their name)"
log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]


def _target(user_id: str) -> str:
    if not user_id or len(user_id) > 64:
        raise InvalidArgument("user_id is required (at most 64 characters)")
    return user_id


def _reason(reason: str) -> str:
    if len(reason) > 500:
        raise InvalidArgument("reason must be at most 500 characters")
    return reason


class MessagingApp(messaging_pb2_grpc.MessagingServiceServicer):
    def __init__(self, settings: MessagingSettings | None = None) -> None:
        self.settings = settings or MessagingSettings()
        self.channels = ChannelDirectory()
        self.directory = AuthDirectory()
        self.devices = DeviceRelay(self.directory)  # the to-device relay's projection
        self.device_keys = DeviceKeyServicer(self, self.devices)
        self._ctx: RunContext | None = None
        self._event_log: MessagingLog | None = None
        self._auth_replay: Replay | None = None
        self._due: DurableConsumer | None = None
        self.storage_due: StorageDue | None = None  # the checks on storage's due facts (its clock, for tests)
        # Before a channel's first change here: numbers deleted from the log's tail stay taken.
        self.log_tail = ArchivedTail(None)

    async def start(self, ctx: RunContext) -> None:
        self._ctx = ctx
        # Sends that posted a message (a retried send is not counted again): messages/s on the
        # console's Health page, and in /metrics.
        self._posted = ctx.metrics.counter(
            "parley_messages_posted", "Messages posted (a retried send counts once)", heartbeat=True
        )
        # Users and devices (auth owns them) first, then channels and to-device queues.
        # On the process's one replay of AUTH, with the runner's access and signing keys.
        self._auth_replay = ctx.bus.follow(stream="AUTH", filter_subject=AUTH_FILTER, handler=self._apply_auth)
        await ctx.bus.start_following()
        await self._auth_replay.wait_caught_up()
        if ctx.settings.storage_addr:
            self.log_tail = ArchivedTail(
                storage_pb2_grpc.StorageArchiveServiceStub(ctx.channel_to(ctx.settings.storage_addr, "storage"))
            )
        replay = await ctx.bus.replay(stream="MSG", filter_subject=MESSAGING_FILTER, handler=self._apply)
        self._event_log = MessagingLog(ctx.bus, replay)
        await replay.wait_caught_up()
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

    @property
    def event_log(self) -> MessagingLog:
        assert self._event_log is not None
        return self._event_log

    async def stop(self) -> None:
        pass

    # --- projections ------------------------------------------------------------------------

    async def _apply_auth(self, event: ReceivedEvent) -> None:
        self.devices.apply_auth(event.envelope)

    async def _apply(self, event: ReceivedEvent) -> None:
        if event.envelope.aggregate_type == "channel":
            self.channels.apply_envelope(event.envelope, event.stream_seq)
        elif event.envelope.aggregate_type in ("device", "todevice"):
            self.devices.apply(event.envelope, event.stream_seq)

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

    # --- the write path ---------------------------------------------------------------------

    async def _decide(self, channel_id: str, actor: str, command: object) -> tuple[Channel, cmd.Decision]:
        """The channel after `command` (decisions.decide), and the last decision made on it."""
        if not channel_id:
            raise InvalidArgument("channel_id is required")
        await self.log_tail.check(await self._caught_up(channel_id))
        last: cmd.Decision = cmd.NOTHING

        def decide(channel: Channel) -> NewEvent | None:
            nonlocal last
            last = cmd.decide(channel, command)
            events = last[0]
            return new_event(events[0], actor) if events else None  # one event per command at most

        read = lambda: self.channels.get(channel_id)  # noqa: E731
        channel = await self.event_log.decide_and_append(channel_subject(channel_id), read, decide)
        return channel, last

    async def _caught_up(self, channel_id: str) -> Channel:
        """The channel; one this instance has not applied yet (created a moment ago through
        another instance) is read from the log first, so a client's next call after creating it
        never meets NOT_FOUND, whichever instance answers. Costs one look-up, on a miss only."""
        if channel_id not in self.channels and CHANNEL_ID.fullmatch(channel_id):
            await self.event_log.settle(channel_subject(channel_id))
        return self.channels.get(channel_id)

    async def _create(self, command: cmd.CreateChannel) -> Channel:
        """Create the channel unless a call with the same key did: then the first one stands."""
        events, _ = cmd.create(self.channels.find(command.channel_id), command)
        if events:
            subject = channel_subject(command.channel_id)
            try:
                await self.event_log.append_to(subject, new_event(events[0], command.creator_id), None)
            except ConcurrencyConflict:
                await self.event_log.settle(subject)  # created by the first call, then changed
        return self.channels.get(command.channel_id)

    def _user(self, context: Context) -> str:
        return self.ctx.tokens.caller(context).user_id

    def _caller_or_platform(self, context: Context) -> str:
        """The acting user's id, or "platform" for the operator's tooling (its certificate, no
        token); the interceptor let only these through (rbac.PLATFORM_METHODS)."""
        if bearer_token(context) is None and PLATFORM_USER in peer_names(context):
            return PLATFORM_USER
        return self._user(context)

    # --- channels ---------------------------------------------------------------------------

    async def CreateChannel(
        self, request: messaging_pb2.CreateChannelRequest, context: Context
    ) -> messaging_pb2.Channel:
        creator = self._user(context)
        name = validate_channel_name(request.name)
        command = cmd.CreateChannel(
            channel_id=created_channel_id(creator, validate_idempotency_key(request.idempotency_key)),
            name=name,
            creator_id=creator,
            encrypted=request.encrypted,
            private=request.private,
            hide_history_before_join=request.hide_history_before_join,
        )
        return channel_proto(await self._create(command), creator)

    async def CreateDirectChannel(
        self, request: messaging_pb2.CreateDirectChannelRequest, context: Context
    ) -> messaging_pb2.Channel:
        creator = self._user(context)
        others = validate_direct_members(creator, list(request.user_ids))
        await self._require_users(others)
        command = cmd.CreateChannel(
            channel_id=created_channel_id(creator, validate_idempotency_key(request.idempotency_key)),
            name="direct",
            creator_id=creator,
            encrypted=request.encrypted,
            private=True,
            direct=True,
            member_ids=others,
        )
        return channel_proto(await self._create(command), creator)

    async def JoinChannel(self, request: messaging_pb2.JoinChannelRequest, context: Context) -> messaging_pb2.Channel:
        user = self._user(context)
        channel_id = request.channel_id or self.channels.named_for(request.name, user).channel_id
        channel, _ = await self._decide(channel_id, user, cmd.JoinChannel(user))
        return channel_proto(channel, user)

    async def LeaveChannel(self, request: messaging_pb2.LeaveChannelRequest, context: Context) -> messaging_pb2.Channel:
        user = self._user(context)
        channel, _ = await self._decide(request.channel_id, user, cmd.LeaveChannel(user))
        return channel_proto(channel, "")  # no longer a member: the channel as anyone sees it

    async def ListMyChannels(
        self, request: messaging_pb2.ListMyChannelsRequest, context: Context
    ) -> messaging_pb2.ListMyChannelsResponse:
        user = self._user(context)
        channels = sorted(self.channels.of_member(user), key=lambda c: c.name)
        return messaging_pb2.ListMyChannelsResponse(channels=[channel_proto(c, user) for c in channels])

    async def ListInvitations(
        self, request: messaging_pb2.ListInvitationsRequest, context: Context
    ) -> messaging_pb2.ListInvitationsResponse:
        """The caller's own invitations only: there is no asking about someone else's."""
        invitations = self.channels.invitations_of(self._user(context))
        return invitations_proto([(c, invitation.invited_by) for c, invitation in invitations])

    async def DeclineInvitation(
        self, request: messaging_pb2.DeclineInvitationRequest, context: Context
    ) -> messaging_pb2.DeclineInvitationResponse:
        user = self._user(context)
        if not request.channel_id:
            raise InvalidArgument("channel_id is required")
        if request.channel_id not in self.channels:
            raise NotFound("you have no pending invitation to this channel")  # as for a channel that exists
        await self._decide(request.channel_id, user, cmd.DeclineInvitation(user))
        return messaging_pb2.DeclineInvitationResponse()

    async def _member_action(
        self, request: messaging_pb2.MemberActionRequest, context: Context, command: Callable[[str, str], object]
    ) -> messaging_pb2.Channel:
        actor = self._user(context)
        user_id = _target(request.user_id)
        await self._require_users([user_id], MEMBER_ACTIONS_TAKE)
        channel, _ = await self._decide(request.channel_id, actor, command(actor, user_id))
        return channel_proto(channel, actor)

    async def InviteMember(self, request: messaging_pb2.MemberActionRequest, context: Context) -> messaging_pb2.Channel:
        return await self._member_action(request, context, cmd.InviteMember)

    async def KickMember(self, request: messaging_pb2.MemberActionRequest, context: Context) -> messaging_pb2.Channel:
        return await self._member_action(
            request, context, lambda actor, user: cmd.KickMember(actor, user, _reason(request.reason))
        )

    async def BanMember(self, request: messaging_pb2.MemberActionRequest, context: Context) -> messaging_pb2.Channel:
        return await self._member_action(
            request, context, lambda actor, user: cmd.BanMember(actor, user, _reason(request.reason))
        )

    async def UnbanMember(self, request: messaging_pb2.MemberActionRequest, context: Context) -> messaging_pb2.Channel:
        return await self._member_action(request, context, cmd.UnbanMember)

    async def SetMemberRole(
        self, request: messaging_pb2.SetMemberRoleRequest, context: Context
    ) -> messaging_pb2.Channel:
        actor = self._user(context)
        command = cmd.SetMemberRole(actor, _target(request.user_id), request.role)
        channel, _ = await self._decide(request.channel_id, actor, command)
        return channel_proto(channel, actor)

    async def UpdateChannel(
        self, request: messaging_pb2.UpdateChannelRequest, context: Context
    ) -> messaging_pb2.Channel:
        actor = self._user(context)
        if request.HasField("name") == request.HasField("topic"):
            raise InvalidArgument("give exactly one of name or topic")
        command: object = (
            cmd.RenameChannel(actor, validate_channel_name(request.name))
            if request.HasField("name")
            else cmd.ChangeTopic(actor, validate_topic(request.topic))
        )
        channel, _ = await self._decide(request.channel_id, actor, command)
        return channel_proto(channel, actor)

    async def SetChannelRetention(
        self, request: messaging_pb2.SetChannelRetentionRequest, context: Context
    ) -> messaging_pb2.SetChannelRetentionResponse:
        """The operator's (or a `retention.manage` holder's) policy, recorded on the channel
        before storage expires anything by it: storage's expiry facts are checked against it."""
        actor = self._caller_or_platform(context)
        days = validate_retention_days(request.days)
        await self._decide(request.channel_id, actor, cmd.SetRetention(actor, days))
        return messaging_pb2.SetChannelRetentionResponse(days=days, set_by=actor)

    # --- messages ---------------------------------------------------------------------------

    async def PostMessage(
        self, request: messaging_pb2.PostMessageRequest, context: Context
    ) -> messaging_pb2.ChatMessage:
        caller = self.ctx.tokens.caller(context)
        command = cmd.PostMessage(
            sender_id=caller.user_id,
            sender_name=caller.username,
            body=request.body,
            idempotency_key=validate_idempotency_key(request.idempotency_key),
            message_id=uuid.uuid4().hex,
            at_ns=_now_ns(),
            thread_root_seq=request.thread_root_seq,
        )
        channel, (events, _) = await self._decide(request.channel_id, caller.user_id, command)
        if events:
            self._posted.inc()
        # As the log holds it: a concurrent retry's first copy may be the one that was stored.
        posted = channel.earlier_send(caller.user_id, command.idempotency_key)
        assert posted is not None
        return to_proto(posted)

    async def _change_message(self, channel_id: str, channel_seq: int, actor: str, command: object) -> Channel:
        if channel_seq <= 0:
            raise InvalidArgument("channel_id and channel_seq (>= 1) are required")
        channel, _ = await self._decide(channel_id, actor, command)
        return channel

    async def EditMessage(
        self, request: messaging_pb2.EditMessageRequest, context: Context
    ) -> messaging_pb2.ChatMessage:
        caller = self.ctx.tokens.caller(context)
        command = cmd.EditMessage(
            caller.user_id,
            caller.username,
            request.channel_seq,
            request.body,
            _now_ns(),
            self.settings.max_edits_per_message,
        )
        channel = await self._change_message(request.channel_id, request.channel_seq, caller.user_id, command)
        return to_proto(channel.message(request.channel_seq).current)

    async def RedactMessage(
        self, request: messaging_pb2.RedactMessageRequest, context: Context
    ) -> messaging_pb2.ChatMessage:
        actor = self._user(context)
        command = cmd.RedactMessage(actor, request.channel_seq, _now_ns(), _reason(request.reason))
        channel = await self._change_message(request.channel_id, request.channel_seq, actor, command)
        return to_proto(channel.message(request.channel_seq).current)

    async def React(self, request: messaging_pb2.ReactRequest, context: Context) -> messaging_pb2.ChatMessage:
        actor = self._user(context)
        command = cmd.React(actor, request.channel_seq, request.emoji, request.remove, self.settings.reaction_limits)
        channel, _ = await self._decide(request.channel_id, actor, command)
        record = channel.message(request.channel_seq)
        return to_proto(record.current, record)

    async def MarkRead(self, request: messaging_pb2.MarkReadRequest, context: Context) -> messaging_pb2.Channel:
        actor = self._user(context)
        channel, _ = await self._decide(request.channel_id, actor, cmd.MarkRead(actor, request.channel_seq))
        return channel_proto(channel, actor)

    async def ListThread(
        self, request: messaging_pb2.ListThreadRequest, context: Context
    ) -> messaging_pb2.ListThreadResponse:
        user = self._user(context)
        channel = self.channels.get(request.channel_id)
        return thread_page(channel, user, request.root_seq, request.after_seq, request.limit)

    async def ListMessageVersions(
        self, request: messaging_pb2.ListMessageVersionsRequest, context: Context
    ) -> messaging_pb2.ListMessageVersionsResponse:
        user = self._user(context)
        record = self.channels.get(request.channel_id).earlier_versions(user, request.channel_seq)
        return messaging_pb2.ListMessageVersionsResponse(bodies=record.versions)
