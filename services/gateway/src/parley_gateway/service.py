"""The gateway: verifies the caller, forwards to the owning service, streams live events.

Internal calls carry the caller's own token (each service checks it again: the gateway is not
the only gate) and the client's remaining deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from parley.auth.v1 import auth_pb2, auth_pb2_grpc
from parley.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from parley.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from parley.messaging.v1.events_pb2 import MessagePosted
from parley.storage.v1 import storage_pb2, storage_pb2_grpc

from parley_core.bus import ReceivedEvent, Replay
from parley_core.envelope import open_payload
from parley_core.errors import InvalidArgument, PermissionDenied, ResourceExhausted
from parley_core.rbac import Permission
from parley_core.runner import RunContext
from parley_core.topology import channel_subject

# Events buffered per live stream before the client is told to resync from history.
LIVE_BUFFER = 1000
DEFAULT_DEADLINE_S = 10.0

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
        # The client's address, for auth's per-source lockout and the security events.
        metadata = (*metadata, ("x-parley-source", client_host(context.peer())))
        remaining = context.time_remaining()
        timeout = DEFAULT_DEADLINE_S if remaining is None else max(0.0, min(remaining, 60.0))
        return cls(metadata, timeout)


def client_host(peer: str) -> str:
    """The host of a gRPC peer (ipv4:10.0.0.7:51234 gives ipv4:10.0.0.7): a source is a host, not a connection."""
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() else peer


async def forward(method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp], request: Req, context: Context) -> Resp:
    """Call an internal service on behalf of the client: its token, its remaining deadline."""
    fwd = Forwarded.of(context)
    return await method(request, metadata=fwd.metadata, timeout=fwd.timeout)


class Overflow(Exception):
    pass


class GatewayApp(gateway_pb2_grpc.GatewayServicer):
    def __init__(self) -> None:
        self._ctx: RunContext | None = None
        self._auth: auth_pb2_grpc.AuthServiceAsyncStub | None = None
        self._messaging: messaging_pb2_grpc.MessagingServiceAsyncStub | None = None
        self._storage: storage_pb2_grpc.StorageServiceAsyncStub | None = None
        self._streams: set[asyncio.Task[object]] = set()

    async def start(self, ctx: RunContext) -> None:
        self._ctx = ctx
        s = ctx.settings
        self._auth = auth_pb2_grpc.AuthServiceStub(ctx.channel_to(s.auth_addr, "auth"))
        self._messaging = messaging_pb2_grpc.MessagingServiceStub(ctx.channel_to(s.messaging_addr, "messaging"))
        self._storage = storage_pb2_grpc.StorageServiceStub(ctx.channel_to(s.storage_addr, "storage"))
        gateway_pb2_grpc.add_GatewayServicer_to_server(self, ctx.server)
        ctx.add_service_name(gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name)

    async def stop(self) -> None:
        pass

    def _authenticate(self, context: Context) -> str:
        assert self._ctx is not None
        return self._ctx.tokens.caller(context).user_id

    async def Register(self, request: auth_pb2.RegisterRequest, context: Context) -> auth_pb2.RegisterResponse:
        assert self._auth is not None
        return await forward(self._auth.Register, request, context)

    async def Login(self, request: auth_pb2.LoginRequest, context: Context) -> auth_pb2.LoginResponse:
        assert self._auth is not None
        return await forward(self._auth.Login, request, context)

    async def CreateChannel(
        self, request: messaging_pb2.CreateChannelRequest, context: Context
    ) -> messaging_pb2.Channel:
        assert self._messaging is not None
        self._authenticate(context)
        return await forward(self._messaging.CreateChannel, request, context)

    async def JoinChannel(self, request: messaging_pb2.JoinChannelRequest, context: Context) -> messaging_pb2.Channel:
        assert self._messaging is not None
        self._authenticate(context)
        return await forward(self._messaging.JoinChannel, request, context)

    async def ListMyChannels(
        self, request: messaging_pb2.ListMyChannelsRequest, context: Context
    ) -> messaging_pb2.ListMyChannelsResponse:
        assert self._messaging is not None
        self._authenticate(context)
        return await forward(self._messaging.ListMyChannels, request, context)

    async def SendMessage(
        self, request: messaging_pb2.PostMessageRequest, context: Context
    ) -> messaging_pb2.ChatMessage:
        assert self._messaging is not None
        self._authenticate(context)
        return await forward(self._messaging.PostMessage, request, context)

    async def GetHistory(
        self, request: storage_pb2.GetChannelHistoryRequest, context: Context
    ) -> storage_pb2.GetChannelHistoryResponse:
        assert self._storage is not None
        self._authenticate(context)
        return await forward(self._storage.GetChannelHistory, request, context)

    async def Subscribe(
        self, request: gateway_pb2.SubscribeRequest, context: Context
    ) -> AsyncIterator[gateway_pb2.ClientEvent]:
        assert self._ctx is not None
        assert self._messaging is not None
        self._authenticate(context)
        mine = await forward(self._messaging.ListMyChannels, messaging_pb2.ListMyChannelsRequest(), context)
        my_ids = {c.channel_id for c in mine.channels}
        wanted = list(dict.fromkeys(request.channel_ids)) or sorted(my_ids)
        if len(wanted) > 500:
            raise InvalidArgument("at most 500 channels per live stream")
        if not_mine := [c for c in wanted if c not in my_ids]:
            raise PermissionDenied(f"not a member of channel(s): {', '.join(not_mine[:5])}")

        queue: asyncio.Queue[gateway_pb2.ClientEvent | Overflow] = asyncio.Queue(maxsize=LIVE_BUFFER + 1)

        async def deliver(event: ReceivedEvent) -> None:
            payload = open_payload(event.envelope)
            if not isinstance(payload, MessagePosted):
                return
            item = gateway_pb2.ClientEvent(
                message=messaging_pb2.ChatMessage(
                    channel_id=payload.channel_id,
                    message_id=payload.message_id,
                    sender_id=payload.sender_id,
                    sender_name=payload.sender_name,
                    channel_seq=payload.channel_seq,
                    body=payload.body,
                    sent_at=payload.sent_at,
                )
            )
            if queue.qsize() >= LIVE_BUFFER:
                # A client this far behind gets told to resync rather than growing our memory.
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(Overflow())
                return
            queue.put_nowait(item)

        replays: list[Replay] = []
        try:
            for channel_id in wanted:
                replays.append(
                    await self._ctx.bus.replay(
                        stream="MSG",
                        filter_subject=channel_subject(channel_id),
                        handler=deliver,
                        only_new=True,
                        stop_with_service=False,
                    )
                )
            yield gateway_pb2.ClientEvent(ready=gateway_pb2.Ready(channel_ids=wanted))
            while True:
                item = await self._next_while_allowed(queue, context)
                if isinstance(item, Overflow):
                    raise ResourceExhausted("live stream fell too far behind; reload history and subscribe again")
                yield item
        finally:
            for replay in replays:
                await replay.stop()

    # -- sessions and accounts (issue 3): forwarded to auth, which checks them again ----------

    async def Refresh(self, request: auth_pb2.RefreshRequest, context: Context) -> auth_pb2.LoginResponse:
        assert self._auth is not None
        return await forward(self._auth.Refresh, request, context)

    async def Logout(self, request: auth_pb2.LogoutRequest, context: Context) -> auth_pb2.LogoutResponse:
        assert self._auth is not None
        return await forward(self._auth.Logout, request, context)

    async def ChangePassword(
        self, request: auth_pb2.ChangePasswordRequest, context: Context
    ) -> auth_pb2.ChangePasswordResponse:
        assert self._auth is not None
        return await forward(self._auth.ChangePassword, request, context)

    async def ListSessions(
        self, request: auth_pb2.ListSessionsRequest, context: Context
    ) -> auth_pb2.ListSessionsResponse:
        assert self._auth is not None
        return await forward(self._auth.ListSessions, request, context)

    async def RevokeSession(
        self, request: auth_pb2.RevokeSessionRequest, context: Context
    ) -> auth_pb2.RevokeSessionResponse:
        assert self._auth is not None
        return await forward(self._auth.RevokeSession, request, context)

    async def CreateUser(self, request: auth_pb2.CreateUserRequest, context: Context) -> auth_pb2.Account:
        assert self._auth is not None
        return await forward(self._auth.CreateUser, request, context)

    async def AssignRole(self, request: auth_pb2.AssignRoleRequest, context: Context) -> auth_pb2.Account:
        assert self._auth is not None
        return await forward(self._auth.AssignRole, request, context)

    async def SetAccountDisabled(
        self, request: auth_pb2.SetAccountDisabledRequest, context: Context
    ) -> auth_pb2.Account:
        assert self._auth is not None
        return await forward(self._auth.SetAccountDisabled, request, context)

    async def BeginTotpEnrolment(
        self, request: auth_pb2.BeginTotpEnrolmentRequest, context: Context
    ) -> auth_pb2.BeginTotpEnrolmentResponse:
        assert self._auth is not None
        return await forward(self._auth.BeginTotpEnrolment, request, context)

    async def ConfirmTotpEnrolment(
        self, request: auth_pb2.ConfirmTotpEnrolmentRequest, context: Context
    ) -> auth_pb2.ConfirmTotpEnrolmentResponse:
        assert self._auth is not None
        return await forward(self._auth.ConfirmTotpEnrolment, request, context)

    async def SetMfaRequired(
        self, request: auth_pb2.SetMfaRequiredRequest, context: Context
    ) -> auth_pb2.SetMfaRequiredResponse:
        assert self._auth is not None
        return await forward(self._auth.SetMfaRequired, request, context)

    async def PublishDeviceKeys(self, request: auth_pb2.PublishDeviceKeysRequest, context: Context) -> auth_pb2.Device:
        assert self._auth is not None
        return await forward(self._auth.PublishDeviceKeys, request, context)

    async def UploadOneTimeKeys(
        self, request: auth_pb2.UploadOneTimeKeysRequest, context: Context
    ) -> auth_pb2.UploadOneTimeKeysResponse:
        assert self._auth is not None
        return await forward(self._auth.UploadOneTimeKeys, request, context)

    async def ClaimOneTimeKey(
        self, request: auth_pb2.ClaimOneTimeKeyRequest, context: Context
    ) -> auth_pb2.ClaimedOneTimeKey:
        assert self._auth is not None
        return await forward(self._auth.ClaimOneTimeKey, request, context)

    async def ListDevices(self, request: auth_pb2.ListDevicesRequest, context: Context) -> auth_pb2.ListDevicesResponse:
        assert self._auth is not None
        return await forward(self._auth.ListDevices, request, context)

    async def CreateInvite(self, request: auth_pb2.CreateInviteRequest, context: Context) -> auth_pb2.Invite:
        assert self._auth is not None
        return await forward(self._auth.CreateInvite, request, context)

    async def _next_while_allowed(
        self, queue: asyncio.Queue[gateway_pb2.ClientEvent | Overflow], context: Context
    ) -> gateway_pb2.ClientEvent | Overflow:
        """The next live event, unless the caller lost the right to it first: a revoked session,
        a disabled account or a withdrawn messages.read ends the stream at once (issue 3)."""
        assert self._ctx is not None
        while True:
            self._ctx.tokens.authorize(context, Permission.MESSAGES_READ)
            getter = asyncio.ensure_future(queue.get())
            changed = asyncio.ensure_future(self._ctx.access.changed())
            try:
                await asyncio.wait({getter, changed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
                if not getter.done():
                    getter.cancel()
            if getter.done() and not getter.cancelled():
                self._ctx.tokens.authorize(context, Permission.MESSAGES_READ)
                return getter.result()
