"""ParleyClient: one TLS channel to the gateway, typed calls, and live streams."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from parley.auth.v1 import auth_pb2
from parley.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from parley.messaging.v1 import messaging_pb2
from parley.storage.v1 import storage_pb2

DEFAULT_TIMEOUT_S = 10.0


class ParleyError(Exception):
    """A call the platform refused; `code` is the gRPC status, the message says what to do."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ClientConfig:
    """Where the gateway listens and the CA that signed its certificate."""

    gateway_address: str
    ca_cert: Path

    @classmethod
    def from_data_dir(cls, data_dir: Path) -> ClientConfig:
        path = data_dir / "client.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: start the platform with `make run` (or `parley up`) first")
        raw = json.loads(path.read_text())
        return cls(gateway_address=raw["gateway_address"], ca_cert=Path(raw["ca_cert"]))


def _raise(exc: grpc.aio.AioRpcError) -> ParleyError:
    return ParleyError(exc.code(), exc.details() or exc.code().name)


class LiveStream:
    """Live events of the caller's channels. `ready()` returns once nothing can be missed."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self.channel_ids: list[str] = []

    async def ready(self) -> list[str]:
        first = await self._next()
        if first.WhichOneof("event") != "ready":
            raise ParleyError(grpc.StatusCode.INTERNAL, "live stream did not start with `ready`")
        self.channel_ids = list(first.ready.channel_ids)
        return self.channel_ids

    async def _next(self) -> gateway_pb2.ClientEvent:
        try:
            event = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise _raise(exc) from None
        if event is grpc.aio.EOF:
            raise StopAsyncIteration
        assert isinstance(event, gateway_pb2.ClientEvent)
        return event

    def __aiter__(self) -> AsyncIterator[messaging_pb2.ChatMessage]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[messaging_pb2.ChatMessage]:
        while True:
            event = await self._next()
            if event.WhichOneof("event") == "message":
                yield event.message

    def cancel(self) -> None:
        self._call.cancel()


class ParleyClient:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self._stub = gateway_pb2_grpc.GatewayStub(channel)
        self.access_token: str | None = None
        self.user_id: str | None = None
        self.refresh_token: str | None = None

    @classmethod
    def connect(cls, address: str, *, ca_cert: bytes, server_name: str = "gateway") -> ParleyClient:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca_cert)
        options = [("grpc.ssl_target_name_override", server_name)]
        return cls(grpc.aio.secure_channel(address, credentials, options=options))

    @classmethod
    def from_config(cls, config: ClientConfig) -> ParleyClient:
        return cls.connect(config.gateway_address, ca_cert=config.ca_cert.read_bytes())

    async def __aenter__(self) -> ParleyClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    def _metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.access_token}")] if self.access_token else []

    async def _call(self, method: Any, request: Any, timeout: float = DEFAULT_TIMEOUT_S) -> Any:
        try:
            return await method(request, metadata=self._metadata(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise _raise(exc) from None

    async def register(self, username: str, password: str) -> auth_pb2.RegisterResponse:
        request = auth_pb2.RegisterRequest(username=username, password=password)
        response: auth_pb2.RegisterResponse = await self._call(self._stub.Register, request)
        return response

    async def login(self, username: str, password: str) -> auth_pb2.LoginResponse:
        request = auth_pb2.LoginRequest(username=username, password=password)
        response: auth_pb2.LoginResponse = await self._call(self._stub.Login, request)
        self.access_token = response.access_token
        self.user_id = response.user_id
        self.refresh_token = response.refresh_token or None
        return response

    async def refresh(self) -> auth_pb2.LoginResponse:
        """New access and refresh tokens for the current session; the old refresh token is spent."""
        if not self.refresh_token:
            raise ParleyError(grpc.StatusCode.FAILED_PRECONDITION, "no refresh token; log in first")
        request = auth_pb2.RefreshRequest(refresh_token=self.refresh_token)
        response: auth_pb2.LoginResponse = await self._call(self._stub.Refresh, request)
        self.access_token, self.refresh_token = response.access_token, response.refresh_token
        return response

    async def logout(self) -> None:
        await self._call(self._stub.Logout, auth_pb2.LogoutRequest())
        self.access_token = self.refresh_token = None

    async def change_password(self, current_password: str, new_password: str) -> None:
        request = auth_pb2.ChangePasswordRequest(current_password=current_password, new_password=new_password)
        await self._call(self._stub.ChangePassword, request)

    async def sessions(self, user_id: str = "") -> list[auth_pb2.Session]:
        response: auth_pb2.ListSessionsResponse = await self._call(
            self._stub.ListSessions, auth_pb2.ListSessionsRequest(user_id=user_id)
        )
        return list(response.sessions)

    async def revoke_session(self, session_id: str) -> None:
        await self._call(self._stub.RevokeSession, auth_pb2.RevokeSessionRequest(session_id=session_id))

    def use_token(self, access_token: str, user_id: str = "") -> None:
        self.access_token = access_token
        self.user_id = user_id or None

    async def create_channel(self, name: str) -> messaging_pb2.Channel:
        channel: messaging_pb2.Channel = await self._call(
            self._stub.CreateChannel, messaging_pb2.CreateChannelRequest(name=name)
        )
        return channel

    async def join_channel(self, channel_id: str) -> messaging_pb2.Channel:
        channel: messaging_pb2.Channel = await self._call(
            self._stub.JoinChannel, messaging_pb2.JoinChannelRequest(channel_id=channel_id)
        )
        return channel

    async def my_channels(self) -> list[messaging_pb2.Channel]:
        response: messaging_pb2.ListMyChannelsResponse = await self._call(
            self._stub.ListMyChannels, messaging_pb2.ListMyChannelsRequest()
        )
        return list(response.channels)

    async def send(
        self, channel_id: str, body: str, *, idempotency_key: str | None = None
    ) -> messaging_pb2.ChatMessage:
        """Send once: a retry with the same idempotency key returns the first result."""
        request = messaging_pb2.PostMessageRequest(
            channel_id=channel_id, body=body, idempotency_key=idempotency_key or uuid.uuid4().hex
        )
        message: messaging_pb2.ChatMessage = await self._call(self._stub.SendMessage, request)
        return message

    async def history(
        self, channel_id: str, *, after_seq: int = 0, limit: int = 100
    ) -> storage_pb2.GetChannelHistoryResponse:
        request = storage_pb2.GetChannelHistoryRequest(channel_id=channel_id, after_seq=after_seq, limit=limit)
        response: storage_pb2.GetChannelHistoryResponse = await self._call(self._stub.GetHistory, request)
        return response

    def subscribe(self, channel_ids: Sequence[str] = ()) -> LiveStream:
        call = self._stub.Subscribe(
            gateway_pb2.SubscribeRequest(channel_ids=list(channel_ids)), metadata=self._metadata()
        )
        return LiveStream(call)
