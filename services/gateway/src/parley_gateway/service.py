"""The gateway: verifies the caller, forwards to the owning service, streams live events.

Internal calls carry the caller's own token (each service checks it again: the gateway is not
the only gate) and the client's remaining deadline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from parley.auth.v1 import auth_pb2, auth_pb2_grpc
from parley.fleet.v1 import fleet_pb2, fleet_pb2_grpc
from parley.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from parley.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from parley.patch.v1 import patch_pb2, patch_pb2_grpc
from parley.storage.v1 import storage_pb2, storage_pb2_grpc

from parley_core import telemetry
from parley_core.compliance_reports import BadReportRequest, NoSuchReport, filed_reports, read_report
from parley_core.errors import (
    OUTCOME_METADATA,
    OUTCOME_UNKNOWN,
    OUTCOME_UNKNOWN_MESSAGE,
    InvalidArgument,
    PermissionDenied,
)
from parley_core.rbac import Permission
from parley_core.runner import RunContext
from parley_core.sources import SOURCE_METADATA, budget_key, client_address
from parley_core.tokens import bearer_token
from parley_core.topology import channel_subject
from parley_core.visibility import HistoryView
from parley_gateway.catchup import events_between
from parley_gateway.fanout import ChannelFeed
from parley_gateway.limits import Admission, GatewayLimits, LiveStreamCaps, RateLimited
from parley_gateway.live import LiveBuffer, LiveSubscriber, channel_event_of, view_of
from parley_gateway.web import BrowserApp, BrowserListener, GatewayConnectApp, GatewayPipeline, WebFiles

log = logging.getLogger(__name__)

DEFAULT_DEADLINE_S = 10.0
ARCHIVE_LAG_WAIT_S = 5.0
FIND_USERS_MAX = 200  # names a FindUsers call takes, and ids per LookupUsers call (auth's limit)
FEED_READY_WAIT_S = 10.0
# How a refusal on a live stream names what was refused (rbac.denial_message).
LIVE_STREAM = "reading the live stream (Subscribe)"
NO_REGISTRY = "this platform runs no patch registry: fleet, findings and roll-outs are not available"

Context = grpc.aio.ServicerContext[Any, Any]
Req = TypeVar("Req")
Resp = TypeVar("Resp")


@dataclass(frozen=True)
class Forwarded:
    """Metadata and deadline for an internal call made on behalf of one client call."""

    metadata: tuple[tuple[str, str | bytes], ...]
    timeout: float

    @classmethod
    def of(cls, context: Context) -> Forwarded:
        metadata = tuple((k, v) for k, v in context.invocation_metadata() or () if k == "authorization")
        # The client's real address (no proxy in front of the gateway), for auth's lockouts,
        # registration budgets and security events; any such metadata from the client is dropped.
        metadata = (*metadata, (SOURCE_METADATA, client_address(context.peer())))
        # The gateway's channels carry no interceptor (see GatewayApp.start): the trace goes on here.
        metadata = (*metadata, *telemetry.trace_metadata())
        remaining = context.time_remaining()
        timeout = DEFAULT_DEADLINE_S if remaining is None else max(0.0, min(remaining, 60.0))
        return cls(metadata, timeout)


# Internal failures a client can act on only by retrying; their details (addresses, internal
# errors) stay in our logs.
HIDDEN_DETAIL = {
    # A call cut off in flight may have made its change: the retry a client is told to make is the same call.
    grpc.StatusCode.UNAVAILABLE: (
        "the service is briefly unavailable; retry shortly (a send with the same idempotency key)"
    ),
    grpc.StatusCode.DEADLINE_EXCEEDED: (
        "the deadline passed before the platform answered, so a change may or may not have been made; "
        "retry with a longer one (a send with the same idempotency key)"
    ),
    grpc.StatusCode.UNKNOWN: "internal error",
    grpc.StatusCode.DATA_LOSS: "internal error",
    grpc.StatusCode.UNIMPLEMENTED: "this call is not available on the platform yet",
}


def outcome_unknown(exc: grpc.aio.AioRpcError) -> bool:
    return exc.code() == grpc.StatusCode.UNAVAILABLE and any(
        key == OUTCOME_METADATA and value == OUTCOME_UNKNOWN for key, value in exc.trailing_metadata() or ()
    )


# Failures that a second instance may not have: the instance's own (a broken canary's INTERNAL or
# UNKNOWN) or its going away (UNAVAILABLE).
REPEATABLE = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE})


async def forward(
    method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
    request: Req,
    context: Context,
    *,
    again: grpc.aio.UnaryUnaryMultiCallable[Req, Resp] | None = None,
) -> Resp:
    """Call an internal service on behalf of the client: its token, its remaining deadline.

    `again`: the same call on an instance no roll-out is trying out, given only for calls safe to
    repeat (reads, and writes carrying an idempotency key, which the service answers with the
    first call's result); a repeatable failure is then sent there once, so a broken canary's
    failures never reach the client.
    """
    fwd = Forwarded.of(context)
    try:
        try:
            return await method(request, metadata=fwd.metadata, timeout=fwd.timeout)
        except grpc.aio.AioRpcError as first:
            # An append the event log did not answer is the platform's trouble, not the instance's:
            # the client's own retries with the key handle it (and a second try would wait as long).
            if again is None or first.code() not in REPEATABLE or outcome_unknown(first):
                raise
            log.info("sent again on a stable instance", extra={"code": first.code().name, "detail": first.details()})
            return await again(request, metadata=fwd.metadata, timeout=Forwarded.of(context).timeout)
    except grpc.aio.AioRpcError as exc:
        if outcome_unknown(exc):
            # A write that may or may not have landed: the service's words (retry with the same
            # key) and its marker, which the SDK retries on, reach the client as they are.
            context.set_trailing_metadata(((OUTCOME_METADATA, OUTCOME_UNKNOWN),))
            await context.abort(grpc.StatusCode.UNAVAILABLE, exc.details() or OUTCOME_UNKNOWN_MESSAGE)
        if (public := HIDDEN_DETAIL.get(exc.code())) is None:
            raise  # a refusal of the client's request: its message is meant for the client
        log.warning("internal call failed", extra={"code": exc.code().name, "detail": exc.details()})
        await context.abort(exc.code(), public)
        raise  # abort raises; this keeps type checkers informed


class GatewayApp(gateway_pb2_grpc.GatewayServicer):
    _feed: ChannelFeed  # from start() on

    def __init__(self, limits: GatewayLimits | None = None) -> None:
        self._ctx: RunContext | None = None
        self._auth: auth_pb2_grpc.AuthServiceAsyncStub | None = None
        self._messaging: messaging_pb2_grpc.MessagingServiceAsyncStub | None = None
        self._devices: messaging_pb2_grpc.DeviceKeyServiceAsyncStub | None = None
        # Messaging through its stable door (no canary), for calls sent again there.
        self._stable_messaging: messaging_pb2_grpc.MessagingServiceAsyncStub | None = None
        self._storage: storage_pb2_grpc.StorageServiceAsyncStub | None = None
        self._archive: storage_pb2_grpc.StorageArchiveServiceAsyncStub | None = None
        self._patch: patch_pb2_grpc.PatchServiceAsyncStub | None = None
        self._fleet: fleet_pb2_grpc.FleetServiceAsyncStub | None = None
        self.limits = limits or GatewayLimits()
        self._admission = Admission(self.limits)
        self._caps = LiveStreamCaps(self.limits)
        self._access_watch: asyncio.Task[None] | None = None
        self.browser: BrowserListener | None = None

    async def start(self, ctx: RunContext) -> None:
        self._ctx = ctx
        live = ctx.metrics.gauge("parley_live_streams", "Live streams (Subscribe) open on this gateway", heartbeat=True)
        live.set_function(lambda: float(self._caps.open_streams))
        self._feed = ChannelFeed(ctx.bus)
        self._feed.start()
        self._access_watch = asyncio.create_task(self._end_streams_that_lost_access(), name="live-access-watch")
        s = ctx.settings
        # Every call on these channels is made with Forwarded's metadata, which carries the trace
        # context: no client interceptor per forwarded call.
        channel_to = partial(ctx.channel_to, context_in_metadata=True)
        self._auth = auth_pb2_grpc.AuthServiceStub(channel_to(s.auth_addr, "auth"))
        messaging = channel_to(s.messaging_addr, "messaging")
        self._messaging = messaging_pb2_grpc.MessagingServiceStub(messaging)
        self._devices = messaging_pb2_grpc.DeviceKeyServiceStub(messaging)
        if s.messaging_stable_addr:
            stable = channel_to(s.messaging_stable_addr, "messaging")
            self._stable_messaging = messaging_pb2_grpc.MessagingServiceStub(stable)
        storage = channel_to(s.storage_addr, "storage")
        self._storage = storage_pb2_grpc.StorageServiceStub(storage)
        self._archive = storage_pb2_grpc.StorageArchiveServiceStub(storage)
        if s.registry_addr:  # a platform without a patch registry has no console calls to forward
            registry = channel_to(s.registry_addr, "patch-registry")
            self._patch = patch_pb2_grpc.PatchServiceStub(registry)
            self._fleet = fleet_pb2_grpc.FleetServiceStub(registry)
        gateway_pb2_grpc.add_GatewayServicer_to_server(self, ctx.server)
        ctx.add_service_name(gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name)
        if s.web_listen_address:
            self._start_browser_listener(ctx)

    def _start_browser_listener(self, ctx: RunContext) -> None:
        """The same calls for browsers (parley_gateway.web): Connect protocol, and the web app."""
        s = ctx.settings
        pipeline = GatewayPipeline(
            lambda server: gateway_pb2_grpc.add_GatewayServicer_to_server(self, server), ctx.interceptors
        )
        # The body may be JSON, larger than the protobuf it holds; _admit checks the message's own size.
        api = GatewayConnectApp(pipeline, read_max_bytes=4 * self.limits.max_request_bytes)
        files = WebFiles(Path(s.web_root) if s.web_root else None)
        self.browser = BrowserListener(
            BrowserApp(api, files),
            pki=ctx.pki,
            address=s.web_listen_address,
            reuse_port=bool(s.shared_listen_address),
            handshake_timeout_s=s.client_handshake_timeout_seconds,
        )
        self.browser.start()
        ctx.client_ports.add(self.browser.port)  # the same per-source cap as the gRPC port's
        log.info("serving browsers", extra={"address": self.browser.address, "web_root": s.web_root})

    async def stop(self) -> None:
        if self.browser is not None:
            await self.browser.stop()
        if self._access_watch is not None:
            self._access_watch.cancel()
            await asyncio.gather(self._access_watch, return_exceptions=True)
        await self._feed.stop()

    def _again(self, name: str, safe: bool = True) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any] | None:
        """Messaging's `name` on an instance no roll-out is trying out, for a call `safe` to repeat
        (a read, or a write carrying its idempotency key); None without a stable door."""
        if self._stable_messaging is None or not safe:
            return None
        method: grpc.aio.UnaryUnaryMultiCallable[Any, Any] = getattr(self._stable_messaging, name)
        return method

    @property
    def live_streams(self) -> int:
        """Live streams this process serves now."""
        return self._feed.stream_count

    async def _admit(self, request: Message, context: Context, *, anonymous: bool = False) -> str:
        """Size, token and budget checks every call passes before any internal call; returns the user id."""
        assert self._ctx is not None
        self._admission.check_size(request.ByteSize())
        user_id = None if anonymous else self._ctx.tokens.caller(context).user_id
        try:
            self._admission.admit(source=budget_key(client_address(context.peer())), user_id=user_id)
        except RateLimited as exc:
            retry_ms = str(max(1, round(exc.retry_after_s * 1000)))
            # The retry hint travels as trailing metadata, so a client can wait exactly that long.
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), trailing_metadata=(("retry-after-ms", retry_ms),)
            )
        return user_id or ""

    async def Register(self, request: auth_pb2.RegisterRequest, context: Context) -> auth_pb2.RegisterResponse:
        assert self._auth is not None
        await self._admit(request, context, anonymous=True)
        return await forward(self._auth.Register, request, context)

    async def Login(self, request: auth_pb2.LoginRequest, context: Context) -> auth_pb2.LoginResponse:
        assert self._auth is not None
        await self._admit(request, context, anonymous=True)
        return await forward(self._auth.Login, request, context)

    async def CreateChannel(
        self, request: messaging_pb2.CreateChannelRequest, context: Context
    ) -> messaging_pb2.Channel:
        assert self._messaging is not None
        await self._admit(request, context)
        again = self._again("CreateChannel", bool(request.idempotency_key))
        return await forward(self._messaging.CreateChannel, request, context, again=again)

    async def JoinChannel(self, request: messaging_pb2.JoinChannelRequest, context: Context) -> messaging_pb2.Channel:
        assert self._messaging is not None
        await self._admit(request, context)
        return await forward(self._messaging.JoinChannel, request, context)

    async def ListMyChannels(
        self, request: messaging_pb2.ListMyChannelsRequest, context: Context
    ) -> messaging_pb2.ListMyChannelsResponse:
        assert self._messaging is not None
        await self._admit(request, context)
        return await forward(self._messaging.ListMyChannels, request, context, again=self._again("ListMyChannels"))

    async def SendMessage(
        self, request: messaging_pb2.PostMessageRequest, context: Context
    ) -> messaging_pb2.ChatMessage:
        assert self._messaging is not None
        await self._admit(request, context)
        again = self._again("PostMessage", bool(request.idempotency_key))
        return await forward(self._messaging.PostMessage, request, context, again=again)

    async def EditMessage(
        self, request: messaging_pb2.EditMessageRequest, context: Context
    ) -> messaging_pb2.ChatMessage:
        assert self._messaging is not None
        await self._admit(request, context)
        return await forward(self._messaging.EditMessage, request, context)

    async def RedactMessage(
        self, request: messaging_pb2.RedactMessageRequest, context: Context
    ) -> messaging_pb2.ChatMessage:
        assert self._messaging is not None
        await self._admit(request, context)
        return await forward(self._messaging.RedactMessage, request, context)

    async def ListMessageVersions(
        self, request: messaging_pb2.ListMessageVersionsRequest, context: Context
    ) -> messaging_pb2.ListMessageVersionsResponse:
        assert self._messaging is not None
        await self._admit(request, context)
        return await forward(
            self._messaging.ListMessageVersions, request, context, again=self._again("ListMessageVersions")
        )

    async def LeaveChannel(self, request: messaging_pb2.LeaveChannelRequest, context: Context) -> messaging_pb2.Channel:
        assert self._messaging is not None
        await self._admit(request, context)
        return await forward(self._messaging.LeaveChannel, request, context)

    async def SendToDevice(
        self, request: messaging_pb2.SendToDeviceRequest, context: Context
    ) -> messaging_pb2.SendToDeviceResponse:
        assert self._devices is not None
        await self._admit(request, context)
        return await forward(self._devices.SendToDevice, request, context)

    async def FetchToDevice(
        self, request: messaging_pb2.FetchToDeviceRequest, context: Context
    ) -> messaging_pb2.FetchToDeviceResponse:
        assert self._devices is not None
        await self._admit(request, context)
        return await forward(self._devices.FetchToDevice, request, context)

    async def CreateDirectChannel(
        self, request: messaging_pb2.CreateDirectChannelRequest, context: Context
    ) -> messaging_pb2.Channel:
        assert self._messaging is not None
        await self._admit(request, context)
        return await forward(
            self._messaging.CreateDirectChannel,
            request,
            context,
            again=self._again("CreateDirectChannel", bool(request.idempotency_key)),
        )

    async def InviteMember(self, request: messaging_pb2.MemberActionRequest, context: Context) -> messaging_pb2.Channel:
        assert self._messaging is not None
        await self._admit(request, context)
        return await forward(self._messaging.InviteMember, request, context)

    async def KickMember(self, request: messaging_pb2.MemberActionRequest, context: Context) -> messaging_pb2.Channel:
        assert self._messaging is not None
        await self._admit(request, context)
        return await forward(self._messaging.KickMember, request, context)

    async def BanMember(self, request: messaging_pb2.MemberActionRequest, context: Context) -> messaging_pb2.Channel:
        assert self._messaging is not None
        await self._admit(request, context)
        return await forward(self._messaging.BanMember, request, context)

    async def UnbanMember(self, request: messaging_pb2.MemberActionRequest, context: Context) -> messaging_pb2.Channel:
        assert self._messaging is not None
        await self._admit(request, context)
        return await forward(self._messaging.UnbanMember, request, context)

    async def SetMemberRole(
        self, request: messaging_pb2.SetMemberRoleRequest, context: Context
    ) -> messaging_pb2.Channel:
        assert self._messaging is not None
        await self._admit(request, context)
        return await forward(self._messaging.SetMemberRole, request, context)

    async def UpdateChannel(
        self, request: messaging_pb2.UpdateChannelRequest, context: Context
    ) -> messaging_pb2.Channel:
        assert self._messaging is not None
        await self._admit(request, context)
        return await forward(self._messaging.UpdateChannel, request, context)

    async def ListThread(
        self, request: messaging_pb2.ListThreadRequest, context: Context
    ) -> messaging_pb2.ListThreadResponse:
        assert self._messaging is not None
        await self._admit(request, context)
        return await forward(self._messaging.ListThread, request, context, again=self._again("ListThread"))

    async def React(self, request: messaging_pb2.ReactRequest, context: Context) -> messaging_pb2.ChatMessage:
        assert self._messaging is not None
        await self._admit(request, context)
        return await forward(self._messaging.React, request, context)

    async def MarkRead(self, request: messaging_pb2.MarkReadRequest, context: Context) -> messaging_pb2.Channel:
        assert self._messaging is not None
        await self._admit(request, context)
        return await forward(self._messaging.MarkRead, request, context)

    async def ListInvitations(
        self, request: messaging_pb2.ListInvitationsRequest, context: Context
    ) -> messaging_pb2.ListInvitationsResponse:
        assert self._messaging is not None
        await self._admit(request, context)
        return await forward(self._messaging.ListInvitations, request, context)

    async def DeclineInvitation(
        self, request: messaging_pb2.DeclineInvitationRequest, context: Context
    ) -> messaging_pb2.DeclineInvitationResponse:
        assert self._messaging is not None
        await self._admit(request, context)
        return await forward(self._messaging.DeclineInvitation, request, context)

    async def ExportUserData(
        self, request: storage_pb2.ExportUserDataRequest, context: Context
    ) -> storage_pb2.ExportUserDataResponse:
        assert self._archive is not None
        # Storage allows the user's own data only (parley_storage.access): with the caller's token
        # the gateway can ask for nobody else's.
        await self._admit(request, context)
        return await forward(self._archive.ExportUserData, request, context)

    async def EraseUserData(
        self, request: storage_pb2.EraseUserDataRequest, context: Context
    ) -> storage_pb2.EraseUserDataResponse:
        assert self._archive is not None
        assert self._auth is not None
        await self._admit(request, context)
        # Auth records the request first (it checks it is the caller's own account): it acts on
        # storage's erasure facts for no account whose erasure it did not record.
        erasure = auth_pb2.RequestErasureRequest(user_id=request.user_id, reason=request.reason)
        await forward(self._auth.RequestErasure, erasure, context)
        return await forward(self._archive.EraseUserData, request, context)

    async def LookupUsers(self, request: auth_pb2.LookupUsersRequest, context: Context) -> auth_pb2.LookupUsersResponse:
        assert self._auth is not None
        await self._admit(request, context)
        return await forward(self._auth.LookupUsers, request, context)

    async def FindUsers(self, request: gateway_pb2.FindUsersRequest, context: Context) -> auth_pb2.LookupUsersResponse:
        """Usernames to ids among the people who share a channel with the caller (their channels'
        members, named by auth), and for a caller with users.read in auth's whole directory."""
        assert self._auth is not None
        assert self._messaging is not None
        await self._admit(request, context)
        if not 1 <= len(request.usernames) <= FIND_USERS_MAX:
            raise InvalidArgument(f"give 1 to {FIND_USERS_MAX} usernames")
        wanted = {name.strip().casefold() for name in request.usernames if name.strip()}
        found: dict[str, auth_pb2.UserName] = {}
        mine = await forward(self._messaging.ListMyChannels, messaging_pb2.ListMyChannelsRequest(), context)
        people = sorted({u for c in mine.channels for u in c.member_ids})
        for start in range(0, len(people), FIND_USERS_MAX):
            batch = auth_pb2.LookupUsersRequest(user_ids=people[start : start + FIND_USERS_MAX])
            for user in (await forward(self._auth.LookupUsers, batch, context)).users:
                if user.username.casefold() in wanted:
                    found[user.username.casefold()] = user
        assert self._ctx is not None
        if Permission.USERS_READ in self._ctx.tokens.caller(context).permissions:
            for name in sorted(wanted - found.keys()):  # the directory: auth checks users.read again
                try:
                    account = await forward(self._auth.GetAccount, auth_pb2.GetAccountRequest(username=name), context)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.NOT_FOUND:
                        raise
                    continue
                found[name] = auth_pb2.UserName(user_id=account.user_id, username=account.username)
        return auth_pb2.LookupUsersResponse(users=list(found.values()))

    async def GetHistory(
        self, request: storage_pb2.GetChannelHistoryRequest, context: Context
    ) -> storage_pb2.GetChannelHistoryResponse:
        assert self._storage is not None
        assert self._messaging is not None
        await self._admit(request, context)
        if not request.channel_id:
            raise InvalidArgument("channel_id is required")
        mine = await forward(self._messaging.ListMyChannels, messaging_pb2.ListMyChannelsRequest(), context)
        channel = next((c for c in mine.channels if c.channel_id == request.channel_id), None)
        if channel is None:
            raise PermissionDenied("you are not a member of this channel")
        # The channel may hide what came before this member joined (storage applies it again).
        after_seq = HistoryView(channel.visible_from_seq).page_after(
            after_seq=request.after_seq, before_seq=request.before_seq
        )
        if after_seq is None:
            return storage_pb2.GetChannelHistoryResponse()
        request.after_seq = after_seq
        # Messaging (the write side) says the caller is a member; the archive, which checks
        # membership again from its own copy, can trail it by its lag just after a join.
        loop = asyncio.get_running_loop()
        give_up = loop.time() + min(ARCHIVE_LAG_WAIT_S, context.time_remaining() or ARCHIVE_LAG_WAIT_S)
        while True:
            try:
                return await forward(self._storage.GetChannelHistory, request, context)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.PERMISSION_DENIED or loop.time() > give_up:
                    raise
            await asyncio.sleep(0.1)

    async def Subscribe(
        self, request: gateway_pb2.SubscribeRequest, context: Context
    ) -> AsyncIterator[gateway_pb2.ClientEvent]:
        """Live events of the caller's channels, from the process's channel feed (fanout.py).

        The stream joins the feed before it reads any backlog, at the feed's position then: the
        log up to there, the feed after it, so nothing is missed and nothing comes twice.
        """
        assert self._ctx is not None
        user_id = await self._admit(request, context)
        with self._caps.held(user_id):
            stream, ready, backlog = await self._join_feed(request, context, user_id)
            try:
                yield ready
                del ready  # a stream lives long: it keeps only what it needs (10,000 of them per process)
                for channel_id, (after, up_to) in backlog.items():
                    view = stream.views[channel_id]
                    async for position, envelope in events_between(
                        self._ctx.bus.nc, stream="MSG", subject=channel_subject(channel_id), after=after, up_to=up_to
                    ):
                        event = channel_event_of(envelope, position)
                        if event.client_event is not None and event.seen_by(view):
                            stream.check()  # the backlog is re-checked like live events: revocation ends it too
                            yield event.client_event
                del backlog
                while True:
                    item = await stream.buffer.take()
                    stream.check()
                    yield item
            finally:
                self._feed.remove(stream)

    async def _join_feed(
        self, request: gateway_pb2.SubscribeRequest, context: Context, user_id: str
    ) -> tuple[LiveSubscriber, gateway_pb2.ClientEvent, dict[str, tuple[int, int]]]:
        """The caller's stream, joined to the feed; its `ready` event; per resumed channel, the
        positions between which its backlog is read from the log."""
        assert self._ctx is not None
        assert self._messaging is not None
        await self._feed.wait_ready(min(context.time_remaining() or FEED_READY_WAIT_S, FEED_READY_WAIT_S))
        mine = await forward(self._messaging.ListMyChannels, messaging_pb2.ListMyChannelsRequest(), context)
        views = {c.channel_id: view_of(c) for c in mine.channels}
        resume = {r.channel_id: r.after_position for r in request.resume}
        wanted = list(dict.fromkeys([*request.channel_ids, *resume])) or sorted(views)
        self._caps.check_channels(len(wanted))
        if not_mine := [c for c in wanted if c not in views]:
            raise PermissionDenied(f"not a member of channel(s): {', '.join(not_mine[:5])}")
        token = bearer_token(context) or ""
        tokens = self._ctx.tokens

        def check() -> None:
            tokens.verify(token).require(Permission.MESSAGES_READ, what=LIVE_STREAM)

        # A hidden history starts at the member's join, wherever the client asks to resume.
        starts = {c: max(resume.get(c, 0), views[c].first_position - 1) for c in wanted}
        live_from = self._feed.position
        stream = LiveSubscriber(
            user_id=user_id,
            views={c: views[c] for c in wanted},
            after={c: max(start, live_from) for c, start in starts.items()},
            buffer=LiveBuffer(self.limits.live_buffer),
            check=check,
        )
        self._feed.add(stream)  # no await since live_from was read: no event was handed out in between
        # Channels not resumed start now; the client resumes from these positions if it drops.
        positions = [
            gateway_pb2.ResumeFrom(channel_id=c, after_position=stream.after[c]) for c in wanted if c not in resume
        ]
        ready = gateway_pb2.ClientEvent(ready=gateway_pb2.Ready(channel_ids=wanted, positions=positions))
        return stream, ready, {c: (starts[c], live_from) for c in resume}

    async def _end_streams_that_lost_access(self) -> None:
        """A revoked session, a disabled account or a withdrawn messages.read ends the caller's
        streams at once (issue 3), not at their next event."""
        assert self._ctx is not None
        while True:
            await self._ctx.access.changed()
            for stream in self._feed.streams():
                stream.recheck()

    # -- sessions and accounts (issue 3): forwarded to auth, which checks them again; the same
    # size and rate budgets as every other call (ChangePassword and Refresh cost auth the most) --

    async def Refresh(self, request: auth_pb2.RefreshRequest, context: Context) -> auth_pb2.LoginResponse:
        assert self._auth is not None
        await self._admit(request, context, anonymous=True)
        return await forward(self._auth.Refresh, request, context)

    async def Logout(self, request: auth_pb2.LogoutRequest, context: Context) -> auth_pb2.LogoutResponse:
        assert self._auth is not None
        await self._admit(request, context)
        return await forward(self._auth.Logout, request, context)

    async def ChangePassword(
        self, request: auth_pb2.ChangePasswordRequest, context: Context
    ) -> auth_pb2.ChangePasswordResponse:
        assert self._auth is not None
        await self._admit(request, context)
        return await forward(self._auth.ChangePassword, request, context)

    async def ListSessions(
        self, request: auth_pb2.ListSessionsRequest, context: Context
    ) -> auth_pb2.ListSessionsResponse:
        assert self._auth is not None
        await self._admit(request, context)
        return await forward(self._auth.ListSessions, request, context)

    async def RevokeSession(
        self, request: auth_pb2.RevokeSessionRequest, context: Context
    ) -> auth_pb2.RevokeSessionResponse:
        assert self._auth is not None
        await self._admit(request, context)
        return await forward(self._auth.RevokeSession, request, context)

    async def CreateUser(self, request: auth_pb2.CreateUserRequest, context: Context) -> auth_pb2.Account:
        assert self._auth is not None
        await self._admit(request, context)
        return await forward(self._auth.CreateUser, request, context)

    async def AssignRole(self, request: auth_pb2.AssignRoleRequest, context: Context) -> auth_pb2.Account:
        assert self._auth is not None
        await self._admit(request, context)
        return await forward(self._auth.AssignRole, request, context)

    async def SetAccountDisabled(
        self, request: auth_pb2.SetAccountDisabledRequest, context: Context
    ) -> auth_pb2.Account:
        assert self._auth is not None
        await self._admit(request, context)
        return await forward(self._auth.SetAccountDisabled, request, context)

    async def BeginTotpEnrolment(
        self, request: auth_pb2.BeginTotpEnrolmentRequest, context: Context
    ) -> auth_pb2.BeginTotpEnrolmentResponse:
        assert self._auth is not None
        await self._admit(request, context)
        return await forward(self._auth.BeginTotpEnrolment, request, context)

    async def ConfirmTotpEnrolment(
        self, request: auth_pb2.ConfirmTotpEnrolmentRequest, context: Context
    ) -> auth_pb2.ConfirmTotpEnrolmentResponse:
        assert self._auth is not None
        await self._admit(request, context)
        return await forward(self._auth.ConfirmTotpEnrolment, request, context)

    async def SetMfaRequired(
        self, request: auth_pb2.SetMfaRequiredRequest, context: Context
    ) -> auth_pb2.SetMfaRequiredResponse:
        assert self._auth is not None
        await self._admit(request, context)
        return await forward(self._auth.SetMfaRequired, request, context)

    async def PublishDeviceKeys(self, request: auth_pb2.PublishDeviceKeysRequest, context: Context) -> auth_pb2.Device:
        assert self._auth is not None
        await self._admit(request, context)
        return await forward(self._auth.PublishDeviceKeys, request, context)

    async def UploadOneTimeKeys(
        self, request: auth_pb2.UploadOneTimeKeysRequest, context: Context
    ) -> auth_pb2.UploadOneTimeKeysResponse:
        assert self._auth is not None
        await self._admit(request, context)
        return await forward(self._auth.UploadOneTimeKeys, request, context)

    async def ClaimOneTimeKey(
        self, request: auth_pb2.ClaimOneTimeKeyRequest, context: Context
    ) -> auth_pb2.ClaimedOneTimeKey:
        assert self._auth is not None
        await self._admit(request, context)
        return await forward(self._auth.ClaimOneTimeKey, request, context)

    async def ListDevices(self, request: auth_pb2.ListDevicesRequest, context: Context) -> auth_pb2.ListDevicesResponse:
        assert self._auth is not None
        await self._admit(request, context)
        return await forward(self._auth.ListDevices, request, context)

    async def RemoveDevice(
        self, request: auth_pb2.RemoveDeviceRequest, context: Context
    ) -> auth_pb2.RemoveDeviceResponse:
        assert self._auth is not None
        await self._admit(request, context)
        return await forward(self._auth.RemoveDevice, request, context)

    async def CreateInvite(self, request: auth_pb2.CreateInviteRequest, context: Context) -> auth_pb2.Invite:
        assert self._auth is not None
        await self._admit(request, context)
        return await forward(self._auth.CreateInvite, request, context)

    async def ResetMfa(self, request: auth_pb2.ResetMfaRequest, context: Context) -> auth_pb2.Account:
        assert self._auth is not None
        await self._admit(request, context)
        return await forward(self._auth.ResetMfa, request, context)

    async def UnlockAccount(self, request: auth_pb2.UnlockAccountRequest, context: Context) -> auth_pb2.Account:
        assert self._auth is not None
        await self._admit(request, context)
        return await forward(self._auth.UnlockAccount, request, context)

    async def RegenerateRecoveryCodes(
        self, request: auth_pb2.RegenerateRecoveryCodesRequest, context: Context
    ) -> auth_pb2.RegenerateRecoveryCodesResponse:
        assert self._auth is not None
        await self._admit(request, context)
        return await forward(self._auth.RegenerateRecoveryCodes, request, context)

    # -- the operator's console: the patch registry and the audit trail, as the caller --

    async def _registry(
        self, request: Message, context: Context, *, changes: str = ""
    ) -> patch_pb2_grpc.PatchServiceAsyncStub:
        """The registry, for a caller admitted; for a change (`changes` names it), only one who
        holds patches.rollout at all: the registry's own narrower rules decide among those."""
        await self._admit(request, context)
        if changes:
            self._require(context, Permission.PATCHES_ROLLOUT, changes)
        if self._patch is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, NO_REGISTRY)
        assert self._patch is not None
        return self._patch

    def _require(self, context: Context, permission: Permission, what: str) -> None:
        """The console's changes and audit queries are service-checked (rbac.SERVICE_CHECKED_METHODS):
        this is the gateway's coarse check in front of the service's own."""
        assert self._ctx is not None
        self._ctx.tokens.authorize(context, permission, what=what)

    async def ListInstances(
        self, request: fleet_pb2.ListInstancesRequest, context: Context
    ) -> fleet_pb2.ListInstancesResponse:
        await self._registry(request, context)
        assert self._fleet is not None
        return await forward(self._fleet.ListInstances, request, context)

    async def GetServiceHealth(
        self, request: fleet_pb2.GetServiceHealthRequest, context: Context
    ) -> fleet_pb2.GetServiceHealthResponse:
        await self._registry(request, context)
        assert self._fleet is not None
        return await forward(self._fleet.GetServiceHealth, request, context)

    async def ListFindings(
        self, request: patch_pb2.ListFindingsRequest, context: Context
    ) -> patch_pb2.ListFindingsResponse:
        return await forward((await self._registry(request, context)).ListFindings, request, context)

    async def ImportAdvisories(
        self, request: patch_pb2.ImportAdvisoriesRequest, context: Context
    ) -> patch_pb2.ImportAdvisoriesResponse:
        registry = await self._registry(request, context, changes="importing advisories")
        return await forward(registry.ImportAdvisories, request, context)

    async def ListReleases(
        self, request: patch_pb2.ListReleasesRequest, context: Context
    ) -> patch_pb2.ListReleasesResponse:
        return await forward((await self._registry(request, context)).ListReleases, request, context)

    async def ListRollouts(
        self, request: patch_pb2.ListRolloutsRequest, context: Context
    ) -> patch_pb2.ListRolloutsResponse:
        return await forward((await self._registry(request, context)).ListRollouts, request, context)

    async def GetRollout(self, request: patch_pb2.GetRolloutRequest, context: Context) -> patch_pb2.Rollout:
        return await forward((await self._registry(request, context)).GetRollout, request, context)

    async def PlanRollout(self, request: patch_pb2.PlanRolloutRequest, context: Context) -> patch_pb2.Rollout:
        registry = await self._registry(request, context, changes="planning a roll-out")
        return await forward(registry.PlanRollout, request, context)

    async def ApproveRollout(self, request: patch_pb2.RolloutCommand, context: Context) -> patch_pb2.Rollout:
        registry = await self._registry(request, context, changes="approving a roll-out")
        return await forward(registry.ApproveRollout, request, context)

    async def PauseRollout(self, request: patch_pb2.RolloutCommand, context: Context) -> patch_pb2.Rollout:
        registry = await self._registry(request, context, changes="pausing a roll-out")
        return await forward(registry.PauseRollout, request, context)

    async def ResumeRollout(self, request: patch_pb2.RolloutCommand, context: Context) -> patch_pb2.Rollout:
        registry = await self._registry(request, context, changes="resuming a roll-out")
        return await forward(registry.ResumeRollout, request, context)

    async def RollbackRollout(self, request: patch_pb2.RolloutCommand, context: Context) -> patch_pb2.Rollout:
        registry = await self._registry(request, context, changes="rolling back a roll-out")
        return await forward(registry.RollbackRollout, request, context)

    async def QueryAudit(
        self, request: storage_pb2.QueryAuditRequest, context: Context
    ) -> storage_pb2.ArchivedEventsPage:
        assert self._archive is not None
        await self._admit(request, context)
        self._require(context, Permission.AUDIT_READ, "querying the audit trail")
        return await forward(self._archive.QueryAudit, request, context)

    async def WatchSecurityEvents(
        self, request: storage_pb2.WatchSecurityEventsRequest, context: Context
    ) -> AsyncIterator[storage_pb2.SecurityEventNotice]:
        """Storage's security event stream, relayed for as long as the caller holds it open (one of
        the caller's live-stream slots); storage ends it when the token no longer holds."""
        assert self._archive is not None
        user_id = await self._admit(request, context)
        self._require(context, Permission.AUDIT_READ, "watching the security events")
        fwd = Forwarded.of(context)
        with self._caps.held(user_id):
            # No deadline of ours: the stream lives as long as the client keeps it (or its own deadline).
            call = self._archive.WatchSecurityEvents(request, metadata=fwd.metadata, timeout=context.time_remaining())
            try:
                async for notice in call:
                    yield notice
            except grpc.aio.AioRpcError as exc:
                if (public := HIDDEN_DETAIL.get(exc.code())) is None:
                    await context.abort(exc.code(), exc.details() or "")
                log.warning("security event stream failed", extra={"code": exc.code().name, "detail": exc.details()})
                await context.abort(exc.code(), public)
            finally:
                call.cancel()

    async def ListComplianceReports(
        self, request: gateway_pb2.ListComplianceReportsRequest, context: Context
    ) -> gateway_pb2.ListComplianceReportsResponse:
        """The reports filed in the data folder (fleet.read, checked by the interceptor)."""
        assert self._ctx is not None
        await self._admit(request, context)
        filed = await asyncio.to_thread(filed_reports, self._ctx.settings.data_dir)
        return gateway_pb2.ListComplianceReportsResponse(
            reports=[
                gateway_pb2.ComplianceReportEntry(report_id=r.report_id, written_at=r.written_at, formats=r.formats)
                for r in filed
            ]
        )

    async def GetComplianceReport(
        self, request: gateway_pb2.GetComplianceReportRequest, context: Context
    ) -> gateway_pb2.ComplianceReport:
        """One filed report's text, by id (never a path: parley_core.compliance_reports)."""
        assert self._ctx is not None
        await self._admit(request, context)
        try:
            report, fmt, content = await asyncio.to_thread(
                read_report, self._ctx.settings.data_dir, request.report_id, request.format
            )
        except BadReportRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # abort raises; this keeps type checkers informed
        except NoSuchReport as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            raise
        return gateway_pb2.ComplianceReport(
            report_id=report.report_id, format=fmt, content=content, written_at=report.written_at
        )

    async def VerifyAudit(
        self, request: gateway_pb2.VerifyAuditRequest, context: Context
    ) -> gateway_pb2.VerifyAuditResponse:
        """Storage's audit monitor's verdict (a stored one, or a fresh run on request): reading the
        whole archive here on every call would cost a page of SEC and AUTH per hundred records."""
        assert self._archive is not None
        await self._admit(request, context)
        self._require(context, Permission.AUDIT_READ, "verifying the audit trail")
        state = await forward(
            self._archive.GetAuditChainState,
            storage_pb2.GetAuditChainStateRequest(verify_now=request.verify_now),
            context,
        )
        return gateway_pb2.VerifyAuditResponse(
            intact=state.intact,
            records=state.records,
            last_index=state.last_index,
            last_recorded_at=state.last_recorded_at,
            findings=state.findings,
            verified_at=state.verified_at,
            head_index=state.head_index,
            last_checkpoint=state.last_checkpoint if state.HasField("last_checkpoint") else None,
            checkpoint_errors=state.checkpoint_errors,
            verify_interval_seconds=state.verify_interval_seconds,
        )
