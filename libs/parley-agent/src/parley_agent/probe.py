"""Synthetic calls through a canary, so that its gate has evidence when users send little or read
nothing (a storage instance serves only reads: sends reach it as events, never as calls).

A real chat transaction, as a user makes it, made on the new instance itself (not through the
front door): for messaging a message sent to it and read back from it, for storage the prober's
channel read from it, for auth the prober's sessions read from it (logins are few and costly).
The calls are counted by the instance like any other, so the registry's gate sees them in its
heartbeats; a failed or slow transaction is evidence too. The prober is an
account of its own (member role), created by the agent with its certificate (the platform
identity's, or a joined host's node-agent one) the first time it is needed, under a name only
those may take (parley_core.synthetic), so the anomaly
detector knows its sends for the platform's own; its password and channel are kept in the
agent's folder (0600). Each host's agent has an account of its own (a name from its host's),
since it keeps the password in its own folder. Services without a transaction here (the gateway,
the registry) are judged on their real traffic.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import grpc
from parley.auth.v1 import auth_pb2, auth_pb2_grpc
from parley.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from parley.storage.v1 import storage_pb2, storage_pb2_grpc

from parley_core.config import PEER_ADDRESS_ENV
from parley_core.files import write_private_file
from parley_core.grpc_channel import secure_channel
from parley_core.pki import Pki, tooling_identity
from parley_core.synthetic import PROBER_NAME_PREFIX, prober_username

log = logging.getLogger(__name__)
PROBER_USERNAME = PROBER_NAME_PREFIX
CALL_TIMEOUT_S = 10.0


class ProbeUnavailable(Exception):
    """The prober cannot act (no account, no channel); the gate waits for real traffic."""


@contextmanager
def _unavailable_on_refusal(what: str) -> Iterator[None]:
    """A call the platform refuses makes the probe unavailable, saying what it could not do."""
    try:
        yield
    except grpc.aio.AioRpcError as error:
        raise ProbeUnavailable(f"{what}: {error.details()}") from None


class Prober:
    """The agent's prober account, its token and its channel; `transaction` makes one service's."""

    def __init__(self, *, pki: Pki, environment: Mapping[str, str], state_file: Path, host: str = "") -> None:
        self.pki = pki
        self.identity = tooling_identity(pki.directory)
        self.host = host
        self.auth_address = environment.get(PEER_ADDRESS_ENV["auth"], "")
        self.messaging_address = environment.get(PEER_ADDRESS_ENV["messaging"], "")
        self.state_file = state_file
        self._token = ""
        self._channel_id = ""
        self._setup = asyncio.Lock()  # concurrent transactions: one creates the account, once

    def _state(self) -> dict[str, str]:
        if not self.state_file.exists():
            return {}
        loaded: dict[str, str] = json.loads(self.state_file.read_text())
        return loaded

    def _save(self, state: dict[str, str]) -> None:
        write_private_file(self.state_file, json.dumps(state).encode())

    async def _login(self) -> None:
        """The prober's account (created once) and a fresh access token."""
        if not self.auth_address:
            raise ProbeUnavailable("no auth address to log the prober in")
        state = self._state()
        # An account made before probers were per host keeps its name.
        username = state.get("username", PROBER_USERNAME if "password" in state else prober_username(self.host))
        channel = secure_channel(self.pki, identity=self.identity, address=self.auth_address, peer="auth")
        try:
            auth = auth_pb2_grpc.AuthServiceStub(channel)
            if "password" not in state:
                password = secrets.token_urlsafe(32)
                with _unavailable_on_refusal("cannot create the prober's account"):
                    await auth.CreateUser(
                        auth_pb2.CreateUserRequest(username=username, password=password, role="member"),
                        timeout=CALL_TIMEOUT_S,
                    )
                state = {"username": username, "password": password}
                self._save(state)
            with _unavailable_on_refusal("the prober cannot log in"):
                login = await auth.Login(
                    auth_pb2.LoginRequest(username=username, password=state["password"]),
                    timeout=CALL_TIMEOUT_S,
                )
        finally:
            await channel.close()
        self._token = login.access_token
        self._channel_id = state.get("channel_id", "")

    def _metadata(self) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {self._token}"),)

    async def _ensure_channel(self) -> None:
        if self._channel_id:
            return
        channel = secure_channel(self.pki, identity=self.identity, address=self.messaging_address, peer="messaging")
        try:
            with _unavailable_on_refusal("cannot create the prober's channel"):
                created = await messaging_pb2_grpc.MessagingServiceStub(channel).CreateChannel(
                    messaging_pb2.CreateChannelRequest(name="canary-probes", private=True),
                    metadata=self._metadata(),
                    timeout=CALL_TIMEOUT_S,
                )
        finally:
            await channel.close()
        self._channel_id = created.channel_id
        self._save({**self._state(), "channel_id": created.channel_id})

    async def transaction(self, service: str, address: str) -> bool:
        """One of `service`'s transactions on the instance at `address`; True if it worked."""
        async with self._setup:
            if not self._token:
                await self._login()
            await self._ensure_channel()
        channel = secure_channel(self.pki, identity=self.identity, address=address, peer=service)
        try:
            return await TRANSACTIONS[service](channel, self._channel_id, self._metadata())
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                self._token = ""  # expired: log in again on the next transaction
            return False
        finally:
            await channel.close()


Metadata = tuple[tuple[str, str]]


async def _send_and_read_back(channel: grpc.aio.Channel, channel_id: str, metadata: Metadata) -> bool:
    """A message sent to a messaging instance and read back from it."""
    stub = messaging_pb2_grpc.MessagingServiceStub(channel)
    body = f"canary probe {uuid.uuid4().hex}"
    sent = await stub.PostMessage(
        messaging_pb2.PostMessageRequest(channel_id=channel_id, body=body, idempotency_key=f"probe-{uuid.uuid4().hex}"),
        metadata=metadata,
        timeout=CALL_TIMEOUT_S,
    )
    read = await stub.ListMessageVersions(
        messaging_pb2.ListMessageVersionsRequest(channel_id=channel_id, channel_seq=sent.channel_seq),
        metadata=metadata,
        timeout=CALL_TIMEOUT_S,
    )
    return list(read.bodies[-1:]) == [body]


async def _read_history(channel: grpc.aio.Channel, channel_id: str, metadata: Metadata) -> bool:
    """The prober's channel read from a storage instance (its membership is checked there too)."""
    await storage_pb2_grpc.StorageServiceStub(channel).GetChannelHistory(
        storage_pb2.GetChannelHistoryRequest(channel_id=channel_id, limit=1),
        metadata=metadata,
        timeout=CALL_TIMEOUT_S,
    )
    return True


async def _list_own_sessions(channel: grpc.aio.Channel, _channel_id: str, metadata: Metadata) -> bool:
    """The prober's sessions read from an auth instance (its token is checked there too)."""
    await auth_pb2_grpc.AuthServiceStub(channel).ListSessions(
        auth_pb2.ListSessionsRequest(), metadata=metadata, timeout=CALL_TIMEOUT_S
    )
    return True


# The services whose canaries the agent probes, and the transaction it makes on each.
TRANSACTIONS: dict[str, Callable[[grpc.aio.Channel, str, Metadata], Awaitable[bool]]] = {
    "messaging": _send_and_read_back,
    "storage": _read_history,
    "auth": _list_own_sessions,
}
