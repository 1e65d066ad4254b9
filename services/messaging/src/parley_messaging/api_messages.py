"""Messaging's message calls: post, edit, redact, react, read markers, threads and earlier
versions. Each change is a command on its channel (decisions.py)."""

from __future__ import annotations

import asyncio
import uuid

from parley.messaging.v1 import messaging_pb2

from parley_core.errors import InvalidArgument
from parley_core.tokens import Caller
from parley_messaging import decisions as cmd
from parley_messaging.answers import channel_proto, thread_page, to_proto
from parley_messaging.domain import Channel
from parley_messaging.inputs import (
    validate_idempotency_key,
)
from parley_messaging.post_batches import ItemScope, check_batch_size, item_caller, refused
from parley_messaging.servicer_base import Context, MessagingBase, checked_reason, now_ns


def post_command(caller: Caller, request: messaging_pb2.PostMessageRequest) -> cmd.PostMessage:
    return cmd.PostMessage(
        sender_id=caller.user_id,
        sender_name=caller.username,
        body=request.body,
        idempotency_key=validate_idempotency_key(request.idempotency_key),
        message_id=uuid.uuid4().hex,
        at_ns=now_ns(),
        thread_root_seq=request.thread_root_seq,
    )


class MessagesApi(MessagingBase):
    # --- messages ---------------------------------------------------------------------------

    async def PostMessage(
        self, request: messaging_pb2.PostMessageRequest, context: Context
    ) -> messaging_pb2.ChatMessage:
        caller = self.ctx.tokens.caller(context)
        command = post_command(caller, request)
        channel, (events, _) = await self._decide(request.channel_id, caller.user_id, command)
        return self._posted_answer(channel, bool(events), command)

    async def PostMessages(
        self, request: messaging_pb2.PostMessagesRequest, context: Context
    ) -> messaging_pb2.PostMessagesResponse:
        """The gateway's waiting sends in one call (parley_gateway.send_batches; the gateway's
        alone: topology.GRPC_METHOD_CALLERS): each item checked from its own token and answered on
        its own; a channel's items decided in one turn of its lock, in order, and different
        channels' at the same time."""
        check_batch_size(request)  # what the gateway never sends: one lock turn stays short
        outcomes = [messaging_pb2.PostOutcome() for _ in request.items]
        by_channel: dict[str, list[tuple[int, cmd.PostMessage, ItemScope]]] = {}
        for index, item in enumerate(request.items):
            try:
                command = post_command(item_caller(self.ctx.tokens, item), item.request)
            except Exception as exc:  # this item's refusal; the others go on
                outcomes[index] = refused(exc)
                continue
            by_channel.setdefault(item.request.channel_id, []).append((index, command, ItemScope(item)))
        await asyncio.gather(*(self._post_each(cid, posts, outcomes) for cid, posts in by_channel.items()))
        return messaging_pb2.PostMessagesResponse(outcomes=outcomes)

    async def _post_each(
        self,
        channel_id: str,
        posts: list[tuple[int, cmd.PostMessage, ItemScope]],
        outcomes: list[messaging_pb2.PostOutcome],
    ) -> None:
        try:
            decided = await self._decide_each(channel_id, [(c.sender_id, c, scope) for _, c, scope in posts])
        except Exception as exc:  # the channel itself (none such, or not readable here): each item's answer
            decided = [exc] * len(posts)
        for (index, command, _), outcome in zip(posts, decided, strict=True):
            if isinstance(outcome, Exception):
                outcomes[index] = refused(outcome)
            else:
                channel, (events, _) = outcome
                outcomes[index] = messaging_pb2.PostOutcome(message=self._posted_answer(channel, bool(events), command))

    def _posted_answer(self, channel: Channel, posted: bool, command: cmd.PostMessage) -> messaging_pb2.ChatMessage:
        if posted:
            self._posted.inc()
        # As the log holds it: a concurrent retry's first copy may be the one that was stored.
        message = channel.earlier_send(command.sender_id, command.idempotency_key)
        assert message is not None
        return to_proto(message)

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
