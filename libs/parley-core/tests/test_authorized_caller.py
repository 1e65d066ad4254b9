"""The caller the server interceptor authorized is handed to the handler's first look, once, in
that call only; a revoked session is refused on every later look and every later call."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import jwt
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from parley.auth.v1.events_pb2 import SessionRevoked
from parley.messaging.v1 import messaging_pb2

from parley_core.access import AccessProjection
from parley_core.errors import Unauthenticated
from parley_core.server_interceptors import CallerCheckAndErrors, PerMethodHandlers, method_permission_check
from parley_core.tokens import ALGORITHM, AUDIENCE, ISSUER, TokenVerifier

SERVICE, METHOD = "parley.gateway.v1.Gateway", "SendMessage"  # needs messages.send (rbac.METHOD_PERMISSIONS)


def issue(key: Ed25519PrivateKey, *, user: str, session: str) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": user, "name": user, "jti": uuid.uuid4().hex}
    claims |= {"iat": now, "exp": now + 600, "sid": session, "role": "member"}
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": "k1"})


class Rig:
    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.access = AccessProjection()
        self.tokens = TokenVerifier(self.access)
        self.tokens.add_key("k1", self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
        self.revoke_before_first_look = ""  # a session the handler revokes before it looks at the caller
        self.looks: list[str] = []  # what each look of the handler saw: a user id, or the refusal
        self.channel: grpc.aio.Channel | None = None
        self.hold_first_look: asyncio.Event | None = None  # a call with channel "held" waits on it ...
        self.held = asyncio.Event()  # ... once checked and in the handler

    async def handle(self, request: messaging_pb2.PostMessageRequest, context: Any) -> messaging_pb2.PostMessageRequest:
        if request.channel_id == "held" and self.hold_first_look is not None:
            self.held.set()
            await self.hold_first_look.wait()  # another call on the same connection is checked meanwhile
        if self.revoke_before_first_look:
            revoked = SessionRevoked(session_id=self.revoke_before_first_look, user_id="", reason="logout")
            self.access.apply_payload(revoked, 1)
        for _ in range(2):
            try:
                self.looks.append(self.tokens.caller(context).user_id)
            except Unauthenticated as refused:
                self.looks.append(f"refused: {refused}")
        return request

    async def call(self, token: str, channel_id: str = "c") -> grpc.StatusCode:
        assert self.channel is not None
        send = self.channel.unary_unary(
            f"/{SERVICE}/{METHOD}",
            request_serializer=messaging_pb2.PostMessageRequest.SerializeToString,
            response_deserializer=messaging_pb2.PostMessageRequest.FromString,
        )
        try:
            metadata = (("authorization", f"Bearer {token}"),)
            await send(messaging_pb2.PostMessageRequest(channel_id=channel_id), metadata=metadata)
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK


@pytest_asyncio.fixture
async def rig() -> AsyncIterator[Rig]:
    rig = Rig()
    checks = CallerCheckAndErrors(None, method_permission_check(rig.tokens))
    server = grpc.aio.server(interceptors=[PerMethodHandlers([checks])])
    handler = grpc.unary_unary_rpc_method_handler(
        rig.handle,
        request_deserializer=messaging_pb2.PostMessageRequest.FromString,
        response_serializer=messaging_pb2.PostMessageRequest.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        rig.channel = channel
        yield rig
    await server.stop(None)


async def test_each_call_hands_its_own_caller_to_its_first_look_only(rig: Rig) -> None:
    alice, bob = issue(rig.key, user="alice", session="s-a"), issue(rig.key, user="bob", session="s-b")
    assert [await rig.call(alice), await rig.call(bob), await rig.call(alice)] == [grpc.StatusCode.OK] * 3
    assert rig.looks == ["alice", "alice", "bob", "bob", "alice", "alice"]


async def test_a_session_revoked_after_the_check_is_refused_on_the_next_look_and_the_next_call(rig: Rig) -> None:
    token = issue(rig.key, user="alice", session="s-a")
    assert await rig.call(token) == grpc.StatusCode.OK  # verified, and its signature now remembered
    rig.looks.clear()
    rig.revoke_before_first_look = "s-a"
    await rig.call(token)
    # The first look is the interceptor's check of this call, made before the revocation; the
    # next look reads the session's standing again.
    assert rig.looks == ["alice", "refused: this session was revoked; log in again"]
    rig.revoke_before_first_look = ""
    assert await rig.call(token) == grpc.StatusCode.UNAUTHENTICATED  # the remembered token: refused


async def test_a_call_checked_while_another_waits_on_the_same_connection_hands_over_nothing_to_it(rig: Rig) -> None:
    """Two calls at once on one HTTP/2 connection: bob's is checked and looked at while alice's,
    already checked, waits before its first look; each look sees its own call's caller."""
    alice, bob = issue(rig.key, user="alice", session="s-a"), issue(rig.key, user="bob", session="s-b")
    rig.hold_first_look = asyncio.Event()
    held = asyncio.create_task(rig.call(alice, channel_id="held"))
    await asyncio.wait_for(rig.held.wait(), 10)
    assert await rig.call(bob) == grpc.StatusCode.OK
    rig.hold_first_look.set()
    assert await held == grpc.StatusCode.OK
    assert rig.looks == ["bob", "bob", "alice", "alice"]
