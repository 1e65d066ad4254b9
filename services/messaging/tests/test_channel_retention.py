"""A channel's retention policy is messaging's record: who may set it, what it refuses, and that
a repeat records nothing twice. Real nats-server and gRPC over mutual TLS, the stack in-process.

That storage applies it (and messaging expires nothing else) is tested in storage's
test_removed_texts_leave_the_log.py and test_trust_boundaries.py.
"""

from __future__ import annotations

import uuid

import grpc
import pytest
from parley.messaging.v1 import messaging_pb2, messaging_pb2_grpc

from parley_core.topology import channel_subject
from parley_testing.nats import NatsTestServer
from parley_testing.stack import TIMEOUT_S, Stack, bearer

Request = messaging_pb2.SetChannelRetentionRequest


async def test_the_operator_or_an_admin_sets_a_channels_retention_and_nobody_else(
    stack: Stack, nats_server: NatsTestServer
) -> None:
    await stack.create_user(member := f"member{uuid.uuid4().hex[:6]}", "member")
    await stack.create_user(admin := f"admin{uuid.uuid4().hex[:6]}", "admin")
    member_token = bearer((await stack.login(member)).access_token)
    admin_login = await stack.login(admin)
    created = await stack.gateway().CreateChannel(
        messaging_pb2.CreateChannelRequest(name="kept"), metadata=member_token, timeout=TIMEOUT_S
    )
    cid = created.channel_id
    operator = messaging_pb2_grpc.MessagingServiceStub(stack.internal("messaging", identity="platform"))
    as_gateway = messaging_pb2_grpc.MessagingServiceStub(stack.internal("messaging"))
    channels = stack.app("messaging").channels

    set_by_operator = await operator.SetChannelRetention(Request(channel_id=cid, days=30), timeout=TIMEOUT_S)
    assert (set_by_operator.channel_id, set_by_operator.days, set_by_operator.set_by) == (cid, 30, "platform")
    assert channels.get(cid).retention_days == 30
    js = (await nats_server.connect("platform")).jetstream()
    recorded = (await js.get_last_msg("MSG", channel_subject(cid))).seq
    await operator.SetChannelRetention(Request(channel_id=cid, days=30), timeout=TIMEOUT_S)
    assert (await js.get_last_msg("MSG", channel_subject(cid))).seq == recorded  # a repeat records nothing

    by_admin = await as_gateway.SetChannelRetention(
        Request(channel_id=cid, days=7), metadata=bearer(admin_login.access_token), timeout=TIMEOUT_S
    )
    assert (by_admin.days, by_admin.set_by) == (7, admin_login.user_id)
    assert channels.get(cid).retention_days == 7

    for request, metadata, code, words in (
        (Request(channel_id=cid, days=1), member_token, grpc.StatusCode.PERMISSION_DENIED, "retention.manage"),
        (Request(channel_id=cid, days=36_501), (), grpc.StatusCode.INVALID_ARGUMENT, "at most 36500"),
        (Request(channel_id=uuid.uuid4().hex, days=30), (), grpc.StatusCode.NOT_FOUND, "no channel"),
        (Request(channel_id="", days=30), (), grpc.StatusCode.INVALID_ARGUMENT, "channel_id is required"),
    ):
        stub = as_gateway if metadata else operator
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.SetChannelRetention(request, metadata=metadata, timeout=TIMEOUT_S)
        assert refused.value.code() == code
        assert words in (refused.value.details() or "")
    assert channels.get(cid).retention_days == 7  # no refused call changed it
