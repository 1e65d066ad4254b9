"""The gateway: verifies the caller, forwards to the owning service, streams live events.

Internal calls carry the caller's own token (each service checks it again: the gateway is not
the only gate) and the client's remaining deadline (parley_gateway.forwarding). The plain calls
are served from one table (parley_gateway.domain.routes); the ones that do more are written out
here. What is decided at the edge (admission, routes, which sends go together, what a live
stream receives) is parley_gateway.domain's; this module translates and makes the calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message
from parley.auth.v1 import auth_pb2, auth_pb2_grpc
from parley.fleet.v1 import fleet_pb2_grpc
from parley.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from parley.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from parley.patch.v1 import patch_pb2_grpc
from parley.storage.v1 import storage_pb2, storage_pb2_grpc

from parley_core.errors import InvalidArgument, PermissionDenied
from parley_core.rbac import Permission
from parley_core.runner import RunContext
from parley_core.sources import budget_key, client_address
from parley_core.tokens import bearer_token
from parley_core.visibility import HistoryView
from parley_gateway.console import relay_security_events, report, report_list
from parley_gateway.domain.admission import Admission, LiveStreamCaps, RateLimited
from parley_gateway.domain.routes import ROUTES, Again, Upstream
from parley_gateway.fanout import ChannelFeed
from parley_gateway.forwarding import Context, forward
from parley_gateway.limits import GatewayLimits
from parley_gateway.live import LiveSubscriber
from parley_gateway.routes import Bound, bind
from parley_gateway.send_batches import SendBatches
from parley_gateway.subscriptions import Backlog, backlog_events, joined
from parley_gateway.web import BrowserApp, BrowserListener, WebFiles
from parley_gateway.web_api import GatewayConnectApp
from parley_gateway.web_calls import GatewayPipeline

log = logging.getLogger(__name__)

ARCHIVE_LAG_WAIT_S = 5.0
FIND_USERS_MAX = 200  # names a FindUsers call takes, and ids per LookupUsers call (auth's limit)
FEED_READY_WAIT_S = 10.0
# How a refusal on a live stream names what was refused (rbac.denial_message).
LIVE_STREAM = "reading the live stream (Subscribe)"
NO_REGISTRY = "this platform runs no patch registry: fleet, findings and roll-outs are not available"


class GatewayApp(gateway_pb2_grpc.GatewayServicer):
    _feed: ChannelFeed  # from start() on
    _sends: SendBatches  # from start() on: clients' sends, to messaging in batches

    def __init__(self, limits: GatewayLimits | None = None) -> None:
        self._ctx: RunContext | None = None
        self._auth: auth_pb2_grpc.AuthServiceAsyncStub | None = None
        self._messaging: messaging_pb2_grpc.MessagingServiceAsyncStub | None = None
        # Messaging through its stable door (no canary), for calls sent again there.
        self._stable_messaging: messaging_pb2_grpc.MessagingServiceAsyncStub | None = None
        self._storage: storage_pb2_grpc.StorageServiceAsyncStub | None = None
        self._archive: storage_pb2_grpc.StorageArchiveServiceAsyncStub | None = None
        self.limits = limits or GatewayLimits()
        self._admission = Admission(self.limits)
        self._caps = LiveStreamCaps(self.limits)
        self._access_watch: asyncio.Task[None] | None = None
        self._routes: dict[str, Bound] = {}  # from start() on: the table's calls, bound to their stubs
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
        if s.messaging_stable_addr:
            stable = channel_to(s.messaging_stable_addr, "messaging")
            self._stable_messaging = messaging_pb2_grpc.MessagingServiceStub(stable)
        storage = channel_to(s.storage_addr, "storage")
        self._storage = storage_pb2_grpc.StorageServiceStub(storage)
        self._archive = storage_pb2_grpc.StorageArchiveServiceStub(storage)
        # A platform without a patch registry has no console calls to forward.
        registry = channel_to(s.registry_addr, "patch-registry") if s.registry_addr else None
        upstreams = {
            Upstream.AUTH: self._auth,
            Upstream.MESSAGING: self._messaging,
            Upstream.DEVICES: messaging_pb2_grpc.DeviceKeyServiceStub(messaging),
            Upstream.ARCHIVE: self._archive,
            Upstream.PATCH: None if registry is None else patch_pb2_grpc.PatchServiceStub(registry),
            Upstream.FLEET: None if registry is None else fleet_pb2_grpc.FleetServiceStub(registry),
        }
        self._routes = bind(upstreams, stable=self._stable_messaging)
        stable_post = None if self._stable_messaging is None else self._stable_messaging.PostMessages
        self._sends = SendBatches(self._send_alone, self._messaging.PostMessages, stable_post)
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
            self._admission.admit(
                source=budget_key(client_address(context.peer())), user_id=user_id, now=time.monotonic()
            )
        except RateLimited as exc:
            retry_ms = str(max(1, round(exc.retry_after_s * 1000)))
            # The retry hint travels as trailing metadata, so a client can wait exactly that long.
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), trailing_metadata=(("retry-after-ms", retry_ms),)
            )
        return user_id or ""

    async def _pass_on(self, name: str, request: Any, context: Context) -> Any:
        """A call of the routes table: the checks its route names, then forwarded as it is."""
        bound = self._routes[name]
        route = bound.route
        await self._admit(request, context, anonymous=route.anonymous)
        if route.needs is not None:
            self._require(context, *route.needs)
        if bound.method is None:  # only the registry is optional
            await context.abort(grpc.StatusCode.UNAVAILABLE, NO_REGISTRY)
            raise AssertionError("abort raises")
        again = bound.again
        if route.again is Again.WITH_KEY and not request.idempotency_key:
            again = None
        return await forward(bound.method, request, context, again=again)

    async def SendMessage(
        self, request: messaging_pb2.PostMessageRequest, context: Context
    ) -> messaging_pb2.ChatMessage:
        assert self._messaging is not None
        await self._admit(request, context)
        return await self._sends.send(request, context)

    async def _send_alone(
        self, request: messaging_pb2.PostMessageRequest, context: Context
    ) -> messaging_pb2.ChatMessage:
        assert self._messaging is not None
        again = self._again("PostMessage", bool(request.idempotency_key))
        return await forward(self._messaging.PostMessage, request, context, again=again)

    async def EraseUserData(
        self, request: storage_pb2.EraseUserDataRequest, context: Context
    ) -> storage_pb2.EraseUserDataResponse:
        assert self._archive is not None
        assert self._auth is not None
        await self._admit(request, context)
        # Auth records the request first (it checks it is the caller's own account): it acts on
        # storage's erasure facts for no account whose erasure it did not record.
        erasure = auth_pb2.AccountActionRequest(user_id=request.user_id, reason=request.reason)
        await forward(self._auth.RequestErasure, erasure, context)
        return await forward(self._archive.EraseUserData, request, context)

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
        """Live events of the caller's channels, from the process's channel feed (fanout.py),
        after the backlog of the channels it resumes (subscriptions.py)."""
        assert self._ctx is not None
        user_id = await self._admit(request, context)
        with self._caps.held(user_id):
            stream, ready, backlog = await self._join_feed(request, context, user_id)
            try:
                yield ready
                del ready  # a stream lives long: it keeps only what it needs (10,000 of them per process)
                async for event in backlog_events(self._ctx.bus.nc, stream, backlog):
                    yield event
                del backlog
                while True:
                    item = await stream.buffer.take()
                    stream.check()
                    yield item
            finally:
                self._feed.remove(stream)

    async def _join_feed(
        self, request: gateway_pb2.SubscribeRequest, context: Context, user_id: str
    ) -> tuple[LiveSubscriber, gateway_pb2.ClientEvent, Backlog]:
        assert self._ctx is not None
        assert self._messaging is not None
        await self._feed.wait_ready(min(context.time_remaining() or FEED_READY_WAIT_S, FEED_READY_WAIT_S))
        mine = await forward(self._messaging.ListMyChannels, messaging_pb2.ListMyChannelsRequest(), context)
        await self._feed.caught_up(min(context.time_remaining() or FEED_READY_WAIT_S, FEED_READY_WAIT_S))
        token, tokens = bearer_token(context) or "", self._ctx.tokens

        def check() -> None:
            tokens.verify(token).require(Permission.MESSAGES_READ, what=LIVE_STREAM)

        return joined(
            self._feed,
            mine,
            request,
            user_id=user_id,
            caps=self._caps,
            buffer_size=self.limits.live_buffer,
            check=check,
        )

    async def _end_streams_that_lost_access(self) -> None:
        """A revoked session, a disabled account or a withdrawn messages.read ends the caller's
        streams at once (issue 3), not at their next event."""
        assert self._ctx is not None
        while True:
            await self._ctx.access.changed()
            for stream in self._feed.streams():
                stream.recheck()

    # -- the operator's console: the audit trail and the filed reports, as the caller --

    def _require(self, context: Context, permission: Permission, what: str) -> None:
        """The console's changes and audit queries are service-checked (rbac.SERVICE_CHECKED_METHODS):
        this is the gateway's coarse check in front of the service's own."""
        assert self._ctx is not None
        self._ctx.tokens.authorize(context, permission, what=what)

    async def WatchSecurityEvents(
        self, request: storage_pb2.WatchSecurityEventsRequest, context: Context
    ) -> AsyncIterator[storage_pb2.SecurityEventNotice]:
        """Storage's security event stream, relayed in one of the caller's live-stream slots."""
        assert self._archive is not None
        user_id = await self._admit(request, context)
        self._require(context, Permission.AUDIT_READ, "watching the security events")
        with self._caps.held(user_id):
            async for notice in relay_security_events(self._archive, request, context):
                yield notice

    async def ListComplianceReports(
        self, request: gateway_pb2.ListComplianceReportsRequest, context: Context
    ) -> gateway_pb2.ListComplianceReportsResponse:
        """The reports filed in the data folder (fleet.read, checked by the interceptor)."""
        assert self._ctx is not None
        await self._admit(request, context)
        return await report_list(self._ctx.settings.data_dir)

    async def GetComplianceReport(
        self, request: gateway_pb2.GetComplianceReportRequest, context: Context
    ) -> gateway_pb2.ComplianceReport:
        assert self._ctx is not None
        await self._admit(request, context)
        return await report(self._ctx.settings.data_dir, request, context)

    async def VerifyAudit(
        self, request: storage_pb2.GetAuditChainStateRequest, context: Context
    ) -> storage_pb2.AuditChainState:
        """Storage's audit monitor's verdict (a stored one, or a fresh run on request): reading the
        whole archive here on every call would cost a page of SEC and AUTH per hundred records."""
        assert self._archive is not None
        await self._admit(request, context)
        self._require(context, Permission.AUDIT_READ, "verifying the audit trail")
        return await forward(self._archive.GetAuditChainState, request, context)


def _served_from_the_table(name: str) -> Callable[[GatewayApp, Any, Context], Awaitable[Any]]:
    async def call(self: GatewayApp, request: Any, context: Context) -> Any:
        return await self._pass_on(name, request, context)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"Forwarded as parley_gateway.domain.routes.ROUTES[{name!r}] says."
    return call


for _name in ROUTES:
    if _name in GatewayApp.__dict__:
        raise TypeError(f"Gateway.{_name} is both in the routes table and written out in GatewayApp")
    setattr(GatewayApp, _name, _served_from_the_table(_name))
