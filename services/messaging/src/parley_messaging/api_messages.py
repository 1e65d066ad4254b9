"""Messaging's message calls: post, edit, redact, react, read markers, threads and earlier
versions. Each change is a command on its channel (decisions.py)."""

from __future__ import annotations

import uuid

from parley.messaging.v1 import messaging_pb2

from parley_core.errors import InvalidArgument
from parley_messaging import decisions as cmd
from parley_messaging.answers import channel_proto, thread_page, to_proto
from parley_messaging.domain import Channel
from parley_messaging.inputs import (
    validate_idempotency_key,
)
from parley_messaging.servicer_base import Context, MessagingBase, checked_reason, now_ns


class MessagesApi(MessagingBase):
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
            at_ns=now_ns(),
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
            now_ns(),
            self.settings.max_edits_per_message,
        )
        channel = await self._change_message(request.channel_id, request.channel_seq, caller.user_id, command)
        return to_proto(channel.message(request.channel_seq).current)

    async def RedactMessage(
        self, request: messaging_pb2.RedactMessageRequest, context: Context
    ) -> messaging_pb2.ChatMessage:
        actor = self._user(context)
        command = cmd.RedactMessage(actor, request.channel_seq, now_ns(), checked_reason(request.reason))
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
