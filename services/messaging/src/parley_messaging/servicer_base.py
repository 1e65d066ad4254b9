"""What messaging's servicers share: its start (projections of AUTH and MSG, the consumer of
storage's due facts), who is calling, and the write path: a command is decided on the channel as
the projection holds it (decisions.py) and appended through parley_core.event_log."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from functools import partial
from typing import Any

import grpc
from parley.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from parley.storage.v1 import storage_pb2_grpc

from parley_core.bus import DurableConsumer, ReceivedEvent, Replay
from parley_core.envelope import NewEvent
from parley_core.errors import InvalidArgument, NotFound
from parley_core.event_log import EventLog, Turn
from parley_core.run_context import RunContext
from parley_core.server_interceptors import peer_names
from parley_core.tokens import bearer_token
from parley_core.topology import AUTH_FILTER, CONSUMERS, MESSAGING_FILTER, PLATFORM_USER, channel_subject
from parley_messaging import decisions as cmd
from parley_messaging.codec import new_event
from parley_messaging.device_projection import DeviceRelay
from parley_messaging.device_service import DeviceKeyServicer
from parley_messaging.devices import AuthDirectory
from parley_messaging.domain import Channel
from parley_messaging.inputs import CHANNEL_ID
from parley_messaging.log_tail import ArchivedTail
from parley_messaging.posts_ahead import after_post
from parley_messaging.projection import ChannelDirectory
from parley_messaging.settings import MessagingSettings
from parley_messaging.storage_due import StorageDue

# Facts storage recorded for messaging are acted on before it serves, for at most this long.
DUE_CATCH_UP_S = 30.0


def now_ns() -> int:
    """Now, to the microsecond: a client's datetime holds no more, so a message's time read back
    and given as `after_time` must not find the message itself again (protobuf's GetCurrentTime
    kept microseconds too)."""
    return time.time_ns() // 1000 * 1000


MEMBER_ACTIONS_TAKE = "invite, kick, ban and unban take an existing user's id (the CLI also takes their name)"
log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]


def target_user(user_id: str) -> str:
    if not user_id or len(user_id) > 64:
        raise InvalidArgument("user_id is required (at most 64 characters)")
    return user_id


def checked_reason(reason: str) -> str:
    if len(reason) > 500:
        raise InvalidArgument("reason must be at most 500 characters")
    return reason


def _decision(actor: str, command: object) -> Callable[[Channel], tuple[list[NewEvent], cmd.Decision]]:
    def decide(channel: Channel) -> tuple[list[NewEvent], cmd.Decision]:
        decision = cmd.decide(channel, command)
        events = decision[0]
        return ([new_event(events[0], actor)] if events else []), decision  # one event per command at most

    return decide


class MessagingBase(messaging_pb2_grpc.MessagingServiceServicer):
    def __init__(self, settings: MessagingSettings | None = None) -> None:
        self.settings = settings or MessagingSettings()
        self.channels = ChannelDirectory()
        self.directory = AuthDirectory()
        self.devices = DeviceRelay(self.directory)  # the to-device relay's projection
        self.device_keys = DeviceKeyServicer(self, self.devices)
        self._ctx: RunContext | None = None
        self._event_log: EventLog | None = None
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
        self._event_log = EventLog(ctx.bus, replay)
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
    def event_log(self) -> EventLog:
        assert self._event_log is not None
        return self._event_log

    async def stop(self) -> None:
        pass

    # --- projections ------------------------------------------------------------------------

    async def _apply_auth(self, event: ReceivedEvent) -> None:
        self.devices.apply_auth(event.envelope)

    async def _apply(self, event: ReceivedEvent) -> None:
        if event.envelope.aggregate_type == "channel":
            self.channels.apply_received(event)
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
        """The channel after `command` (decisions.decide), and the decision that holds."""
        read = await self._reader(channel_id)
        return await self.event_log.decide_and_append(channel_subject(channel_id), read, _decision(actor, command))

    async def _decide_each(
        self, channel_id: str, commands: Sequence[tuple[str, object, AbstractContextManager[object]]]
    ) -> list[tuple[Channel, cmd.Decision] | Exception]:
        """Several (actor, command, scope) on one channel in one turn of its lock, in order: each
        one's channel after it and decision, or its own refusal (EventLog.decide_and_append_each;
        a round of plain posts is pipelined, each decided on the channel as the posts before it
        will leave it: posts_ahead)."""
        read = await self._reader(channel_id)
        turns = [Turn(_decision(actor, command), scope) for actor, command, scope in commands]
        return await self.event_log.decide_and_append_each(channel_subject(channel_id), read, turns, ahead=after_post)

    async def _reader(self, channel_id: str) -> Callable[[], Channel]:
        """How the write path reads the channel, once it is known to exist here."""
        if not channel_id:
            raise InvalidArgument("channel_id is required")
        await self.log_tail.check(await self._caught_up(channel_id))
        return lambda: self.channels.get(channel_id)

    async def _caught_up(self, channel_id: str) -> Channel:
        """The channel; one this instance has not applied yet (created a moment ago through
        another instance) is read from the log first, so a client's next call after creating it
        never meets NOT_FOUND, whichever instance answers. Costs one look-up, on a miss only."""
        if channel_id not in self.channels and CHANNEL_ID.fullmatch(channel_id):
            await self.event_log.settle(channel_subject(channel_id))
        return self.channels.get(channel_id)

    async def _create(self, command: cmd.CreateChannel) -> Channel:
        """Create the channel unless a call with the same key did: then the first one stands."""

        def decide(existing: Channel | None) -> tuple[list[NewEvent], None]:
            events, _ = cmd.create(existing, command)
            return [new_event(event, command.creator_id) for event in events], None

        read = partial(self.channels.find, command.channel_id)
        await self.event_log.decide_and_append(channel_subject(command.channel_id), read, decide)
        return self.channels.get(command.channel_id)

    def _user(self, context: Context) -> str:
        return self.ctx.tokens.caller(context).user_id

    def _caller_or_platform(self, context: Context) -> str:
        """The acting user's id, or "platform" for the operator's tooling (its certificate, no
        token); the interceptor let only these through (rbac.PLATFORM_METHODS)."""
        if bearer_token(context) is None and PLATFORM_USER in peer_names(context):
            return PLATFORM_USER
        return self._user(context)
