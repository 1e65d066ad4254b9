"""Signing-key rotation and retirement seen from another service; single-use invitations."""

from __future__ import annotations

import asyncio
import re

import grpc
import jwt
from parley.auth.v1 import auth_pb2, auth_pb2_grpc
from parley.messaging.v1 import messaging_pb2, messaging_pb2_grpc

from parley_testing.stack import PASSWORD, TIMEOUT_S, Stack, bearer
from parley_testing.statuses import status_code
from parley_testing.waiting import eventually


async def test_rotation_keeps_old_tokens_until_their_key_is_retired(stack: Stack) -> None:
    await stack.create_user("alice", "member")
    operator = auth_pb2_grpc.AuthServiceStub(stack.internal("auth", identity="platform"))
    messaging = messaging_pb2_grpc.MessagingServiceStub(stack.internal("messaging"))

    def list_as(token: str) -> object:
        request = messaging_pb2.ListMyChannelsRequest()
        return messaging.ListMyChannels(request, metadata=bearer(token), timeout=TIMEOUT_S)

    old = (await stack.login("alice")).access_token
    old_kid = jwt.get_unverified_header(old)["kid"]
    rotated = await operator.RotateSigningKey(auth_pb2.RotateSigningKeyRequest(), timeout=TIMEOUT_S)
    assert rotated.key_id != old_kid
    new = (await stack.login("alice")).access_token
    assert jwt.get_unverified_header(new)["kid"] == rotated.key_id
    assert await status_code(list_as(new)) == grpc.StatusCode.OK
    assert await status_code(list_as(old)) == grpc.StatusCode.OK

    in_use = operator.RetireSigningKey(auth_pb2.RetireSigningKeyRequest(key_id=rotated.key_id), timeout=TIMEOUT_S)
    assert await status_code(in_use) == grpc.StatusCode.FAILED_PRECONDITION
    await operator.RetireSigningKey(auth_pb2.RetireSigningKeyRequest(key_id=old_kid), timeout=TIMEOUT_S)

    async def retired_refused() -> bool | None:
        return await status_code(list_as(old)) == grpc.StatusCode.UNAUTHENTICATED or None

    await eventually(retired_refused, "messaging to refuse the retired key", TIMEOUT_S)
    assert await status_code(list_as(new)) == grpc.StatusCode.OK


async def test_an_invitation_registers_one_account_once(invite_stack: Stack) -> None:
    stack = invite_stack
    await stack.create_user("root", "owner")
    owner = bearer((await stack.login("root")).access_token)
    gateway = stack.gateway()

    def register(name: str, code: str = "") -> object:
        request = auth_pb2.RegisterRequest(username=name, password=PASSWORD, invite_code=code)
        return gateway.Register(request, timeout=TIMEOUT_S)

    assert await status_code(register("eve")) == grpc.StatusCode.PERMISSION_DENIED
    assert await status_code(register("eve", "made-up-code")) == grpc.StatusCode.PERMISSION_DENIED
    invite = await gateway.CreateInvite(auth_pb2.CreateInviteRequest(role="guest"), metadata=owner, timeout=TIMEOUT_S)
    assert invite.role == "guest"
    # Hex: never read as a command-line option (a URL-safe code could start with "-").
    assert re.fullmatch("[0-9a-f]{48}", invite.invite_code), invite.invite_code
    # A refused registration (weak password) does not burn the invitation.
    weak = gateway.Register(
        auth_pb2.RegisterRequest(username="eve", password="password123456", invite_code=invite.invite_code),
        timeout=TIMEOUT_S,
    )
    assert await status_code(weak) == grpc.StatusCode.INVALID_ARGUMENT
    racing = await asyncio.gather(*(status_code(register(f"eve{i}", invite.invite_code)) for i in range(4)))
    assert sorted(c.name for c in racing) == ["OK", "PERMISSION_DENIED", "PERMISSION_DENIED", "PERMISSION_DENIED"]
    winner = next(i for i, c in enumerate(racing) if c == grpc.StatusCode.OK)
    assert (await stack.login(f"eve{winner}")).role == "guest"
    assert await status_code(register("late", invite.invite_code)) == grpc.StatusCode.PERMISSION_DENIED
    # A member may not hand out invitations.
    await stack.create_user("mia", "member")
    member = bearer((await stack.login("mia")).access_token)
    refused = gateway.CreateInvite(auth_pb2.CreateInviteRequest(), metadata=member, timeout=TIMEOUT_S)
    assert await status_code(refused) == grpc.StatusCode.PERMISSION_DENIED
