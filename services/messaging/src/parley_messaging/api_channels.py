"""Messaging's channel calls: create, join and leave, invitations, membership and roles, the
channel's name, topic and retention. Each request becomes a command (decisions.py)."""

from __future__ import annotations

from collections.abc import Callable

from parley.messaging.v1 import events_pb2, messaging_pb2

from parley_core.errors import InvalidArgument, NotFound
from parley_messaging import decisions as cmd
from parley_messaging.answers import channel_proto, invitations_proto
from parley_messaging.inputs import (
    created_channel_id,
    validate_channel_name,
    validate_direct_members,
    validate_idempotency_key,
    validate_retention_days,
    validate_topic,
)
from parley_messaging.servicer_base import MEMBER_ACTIONS_TAKE, Context, MessagingBase, checked_reason, target_user


class ChannelsApi(MessagingBase):
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
        user_id = target_user(request.user_id)
        await self._require_users([user_id], MEMBER_ACTIONS_TAKE)
        channel, _ = await self._decide(request.channel_id, actor, command(actor, user_id))
        return channel_proto(channel, actor)

    async def InviteMember(self, request: messaging_pb2.MemberActionRequest, context: Context) -> messaging_pb2.Channel:
        return await self._member_action(request, context, cmd.InviteMember)

    async def KickMember(self, request: messaging_pb2.MemberActionRequest, context: Context) -> messaging_pb2.Channel:
        return await self._member_action(
            request, context, lambda actor, user: cmd.KickMember(actor, user, checked_reason(request.reason))
        )

    async def BanMember(self, request: messaging_pb2.MemberActionRequest, context: Context) -> messaging_pb2.Channel:
        return await self._member_action(
            request, context, lambda actor, user: cmd.BanMember(actor, user, checked_reason(request.reason))
        )

    async def UnbanMember(self, request: messaging_pb2.MemberActionRequest, context: Context) -> messaging_pb2.Channel:
        return await self._member_action(request, context, cmd.UnbanMember)

    async def SetMemberRole(
        self, request: messaging_pb2.SetMemberRoleRequest, context: Context
    ) -> messaging_pb2.Channel:
        actor = self._user(context)
        command = cmd.SetMemberRole(actor, target_user(request.user_id), request.role)
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
    ) -> events_pb2.ChannelRetentionSet:
        """The operator's (or a `retention.manage` holder's) policy, recorded on the channel
        before storage expires anything by it: storage's expiry facts are checked against it."""
        actor = self._caller_or_platform(context)
        days = validate_retention_days(request.days)
        await self._decide(request.channel_id, actor, cmd.SetRetention(actor, days))
        return events_pb2.ChannelRetentionSet(channel_id=request.channel_id, days=days, set_by=actor)
