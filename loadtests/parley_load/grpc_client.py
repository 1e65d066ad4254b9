"""A synchronous gRPC client of the gateway that reports every call to Locust.

Locust runs users as gevent greenlets; ``grpc.experimental.gevent.init_gevent()`` (called by
the locustfile before any channel exists) makes blocking grpcio calls yield to other users.
Each call becomes one Locust request event named after the RPC, so the statistics, CSV and
HTML report show every RPC separately, failures with their gRPC status.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
from parley.auth.v1 import auth_pb2
from parley.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from parley.messaging.v1 import messaging_pb2
from parley.storage.v1 import storage_pb2

from parley_load.target import Target

REQUEST_TYPE = "grpc"
CALL_TIMEOUT_S = 30.0

Resp = TypeVar("Resp")
# Locust's `environment.events.request.fire`, kept as a plain callable so this module stays
# importable (and type-checkable) without starting gevent.
FireRequest = Callable[..., None]


class GatewayClient:
    def __init__(self, target: Target, fire: FireRequest) -> None:
        credentials = grpc.ssl_channel_credentials(root_certificates=target.ca_cert)
        self._channel = grpc.secure_channel(
            target.gateway_address, credentials, options=[("grpc.ssl_target_name_override", "gateway")]
        )
        self._stub = gateway_pb2_grpc.GatewayStub(self._channel)
        self._fire = fire
        self.access_token = ""
        self.user_id = ""

    def close(self) -> None:
        self._channel.close()

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.access_token}"),) if self.access_token else ()

    def call(self, name: str, method: Callable[..., Resp], request: Any) -> Resp:
        """Run one unary RPC and report it; a gRPC error is reported, then raised."""
        started = time.perf_counter()
        try:
            response = method(request, metadata=self._metadata(), timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            self.report(name, started, 0, exc)
            raise
        self.report(name, started, _size(response), None, _context(response))
        return response

    def report(
        self,
        name: str,
        started: float,
        length: int,
        exception: BaseException | None,
        context: dict[str, Any] | None = None,
    ) -> None:
        self._fire(
            request_type=REQUEST_TYPE,
            name=name,
            response_time=(time.perf_counter() - started) * 1000.0,
            response_length=length,
            exception=exception,
            context=context or {},
        )

    def register(self, username: str, password: str) -> None:
        self.call("Register", self._stub.Register, auth_pb2.RegisterRequest(username=username, password=password))

    def login(self, username: str, password: str) -> None:
        response = self.call("Login", self._stub.Login, auth_pb2.LoginRequest(username=username, password=password))
        self.access_token, self.user_id = response.access_token, response.user_id

    def create_channel(self, name: str) -> messaging_pb2.Channel:
        return self.call("CreateChannel", self._stub.CreateChannel, messaging_pb2.CreateChannelRequest(name=name))

    def join_channel(self, channel_id: str) -> messaging_pb2.Channel:
        return self.call("JoinChannel", self._stub.JoinChannel, messaging_pb2.JoinChannelRequest(channel_id=channel_id))

    def my_channels(self) -> list[messaging_pb2.Channel]:
        response = self.call("ListMyChannels", self._stub.ListMyChannels, messaging_pb2.ListMyChannelsRequest())
        return list(response.channels)

    def send(self, channel_id: str, body: str, idempotency_key: str) -> messaging_pb2.ChatMessage:
        request = messaging_pb2.PostMessageRequest(channel_id=channel_id, body=body, idempotency_key=idempotency_key)
        return self.call("SendMessage", self._stub.SendMessage, request)

    def edit(self, channel_id: str, channel_seq: int, body: str) -> messaging_pb2.ChatMessage:
        request = messaging_pb2.EditMessageRequest(channel_id=channel_id, channel_seq=channel_seq, body=body)
        return self.call("EditMessage", self._stub.EditMessage, request)

    def react(
        self, channel_id: str, channel_seq: int, emoji: str, *, remove: bool = False
    ) -> messaging_pb2.ChatMessage:
        request = messaging_pb2.ReactRequest(channel_id=channel_id, channel_seq=channel_seq, emoji=emoji, remove=remove)
        return self.call("React", self._stub.React, request)

    def history(self, channel_id: str, limit: int = 50) -> storage_pb2.GetChannelHistoryResponse:
        request = storage_pb2.GetChannelHistoryRequest(channel_id=channel_id, limit=limit)
        return self.call("GetHistory", self._stub.GetHistory, request)

    def subscribe(self, channel_ids: list[str]) -> Iterator[gateway_pb2.ClientEvent]:
        """Open a live stream; the caller reports `ready` and deliveries itself."""
        stream: Iterator[gateway_pb2.ClientEvent] = self._stub.Subscribe(
            gateway_pb2.SubscribeRequest(channel_ids=channel_ids), metadata=self._metadata()
        )
        return stream


def _context(response: object) -> dict[str, Any]:
    """Which message a call acknowledged, so a run's request log can be audited against history."""
    if isinstance(response, messaging_pb2.ChatMessage):
        return {
            "channel_id": response.channel_id,
            "message_id": response.message_id,
            "channel_seq": response.channel_seq,
        }
    return {}


def _size(response: object) -> int:
    byte_size = getattr(response, "ByteSize", None)
    return int(byte_size()) if callable(byte_size) else 0
