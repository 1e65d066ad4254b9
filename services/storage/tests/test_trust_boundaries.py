"""What a forged event or a stolen storage credential achieves against the running services: nothing.

Every service in-process over real gRPC, a real nats-server and SQLite archive. No service's own
NATS user can publish on another owner's subjects any more (test_nats_permissions.py), so the
forged events of the first test are published with the operator's platform identity, the one
user that still can; the second test uses storage's own credential, as someone who stole it.
"""

from __future__ import annotations

import hashlib
import logging
import uuid

import grpc
import nats.js.errors
import pytest
from google.protobuf.message import Message
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from parley.auth.v1 import auth_pb2
from parley.auth.v1.events_pb2 import AccountErased, SecurityEventRecorded
from parley.messaging.v1 import messaging_pb2
from parley.messaging.v1.events_pb2 import MemberJoined, MessagePosted
from parley.storage.v1 import storage_pb2
from parley.storage.v1.events_pb2 import AccountErasureDue, ChannelErasureDue, RetentionDue

from parley_core.bus import FOREIGN_EVENT
from parley_core.envelope import NewEvent, decode, open_payload, seal
from parley_core.testing.nats import NatsTestServer
from parley_core.testing.stack import PASSWORD, TIMEOUT_S, Stack, bearer
from parley_core.testing.waiting import eventually
from parley_core.topology import SERVICES, due_subject, parked_subject, username_subject

Token = tuple[tuple[str, str]]
NS_PER_DAY = 86_400 * 10**9


async def register(stack: Stack, prefix: str) -> tuple[auth_pb2.LoginResponse, Token, str]:
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    await stack.gateway().Register(auth_pb2.RegisterRequest(username=name, password=PASSWORD), timeout=TIMEOUT_S)
    login = await stack.login(name)
    return login, bearer(login.access_token), name


async def history(stack: Stack, token: Token, channel_id: str) -> list[messaging_pb2.ChatMessage]:
    request = storage_pb2.GetChannelHistoryRequest(channel_id=channel_id, limit=100)
    return list((await stack.gateway().GetHistory(request, metadata=token, timeout=TIMEOUT_S)).messages)


def envelope(aggregate_type: str, aggregate_id: str, payload: Message) -> bytes:
    event = NewEvent(aggregate_type=aggregate_type, aggregate_id=aggregate_id, payload=payload, actor="forger")
    return seal(event, aggregate_version=1, producer="forger@0", trace_context={}).SerializeToString()


async def parked(js: JetStreamContext, subject: str) -> RawStreamMsg | None:
    try:
        return await js.get_last_msg("PARKED", subject)
    except nats.js.errors.NotFoundError:
        return None


async def refusal(js: JetStreamContext, service: str, why: str) -> str | None:
    """The reason `service` parked a fact of STORE with, if it did so for `why`."""
    info = await js.stream_info("PARKED")
    for seq in range(int(info.state.first_seq or 1), int(info.state.last_seq or 0) + 1):
        msg = await js.get_msg("PARKED", seq)
        reason = (msg.headers or {}).get("Parley-Parked-Reason", "")
        if msg.subject == parked_subject(service, "STORE") and why in reason:
            return reason
    return None


async def test_an_event_type_its_streams_owner_never_writes_is_parked_and_changes_nothing(
    stack: Stack, nats_server: NatsTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="parley_core.bus")
    alice, alice_token, _ = await register(stack, "alice")
    mallory, mallory_token, _ = await register(stack, "mallory")
    private = await stack.gateway().CreateChannel(
        messaging_pb2.CreateChannelRequest(name="board", private=True), metadata=alice_token, timeout=TIMEOUT_S
    )
    cid = private.channel_id
    platform = (await nats_server.connect("platform")).jetstream()
    # Would have let mallory read the private channel (the archive's membership), and put words
    # in alice's mouth in its history: messaging's event types, on the registry's and auth's streams.
    joined = MemberJoined(channel_id=cid, user_id=mallory.user_id)
    on_patch = (await platform.publish("parley.patch.forged.join", envelope("channel", cid, joined))).seq
    post = MessagePosted(channel_id=cid, sender_id=alice.user_id, sender_name="alice", channel_seq=1, body="forged")
    on_auth = (await platform.publish(username_subject("f" * 64), envelope("channel", cid, post))).seq

    # Parked by every consumer of those streams: storage and the registry read PATCH; every
    # service follows AUTH (its access projection, the signing keys).
    expected = [parked_subject(s, "PATCH") + f".{on_patch}" for s in ("storage", "patch-registry")]
    expected += [parked_subject(s, "AUTH") + f".{on_auth}" for s in SERVICES]
    for subject in expected:
        copy = await eventually(lambda subject=subject: parked(platform, subject), f"a parked copy on {subject}")
        assert copy.headers is not None
        assert copy.headers["Parley-Parked-Kind"] == FOREIGN_EVENT
        assert "foreign event type 'parley.messaging.v1." in copy.headers["Parley-Parked-Reason"]

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await history(stack, mallory_token, cid)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await history(stack, alice_token, cid) == []
    archive = stack.app("storage").archive
    for stream, seq in (("PATCH", on_patch), ("AUTH", on_auth)):
        stored, _ = await archive.stream_events(stream, after_seq=seq - 1, limit=1)
        assert not stored or stored[0].stream_seq != seq  # never archived
    security = [r for r in caplog.records if getattr(r, "security_event", "") == "foreign_event_parked"]
    assert {(r.stream, r.seq) for r in security} == {("PATCH", on_patch), ("AUTH", on_auth)}  # type: ignore[attr-defined]


async def test_a_stolen_storage_credential_cannot_remove_someone_elses_account_or_messages(
    stack: Stack, nats_server: NatsTestServer
) -> None:
    """Storage may still record due facts (on its own stream), but each owner checks them: no
    erasure of messages the erased user did not write, no expiry of recent messages, no
    tombstone on a name another account holds."""
    alice, alice_token, alice_name = await register(stack, "alice")
    mallory, _, _ = await register(stack, "mallory")
    channel = await stack.gateway().CreateChannel(
        messaging_pb2.CreateChannelRequest(name="kept"), metadata=alice_token, timeout=TIMEOUT_S
    )
    cid = channel.channel_id
    sent = await stack.gateway().SendMessage(
        messaging_pb2.PostMessageRequest(channel_id=cid, body="mine", idempotency_key=uuid.uuid4().hex),
        metadata=alice_token,
        timeout=TIMEOUT_S,
    )
    storage = (await nats_server.connect("storage")).jetstream()  # the stolen credential
    alice_name_key = hashlib.sha256(alice_name.encode()).hexdigest()  # auth's username_key of her name
    forged = [
        (
            due_subject("messaging", "erasure", mallory.user_id),
            ChannelErasureDue(user_id=mallory.user_id, channel_id=cid, channel_seqs=[sent.channel_seq]),
        ),
        (
            due_subject("messaging", "expiry", cid),
            RetentionDue(
                channel_id=cid, channel_seqs=[sent.channel_seq], retention_days=1, sent_before_unix_ns=1 << 62
            ),
        ),
        (
            due_subject("auth", "erasure", mallory.user_id),
            AccountErasureDue(user_id=mallory.user_id, username_key=alice_name_key),
        ),
    ]
    for subject, fact in forged:
        await storage.publish(subject, envelope("erasure", mallory.user_id, fact))

    platform = (await nats_server.connect("platform")).jetstream()
    for service, why in (("messaging", "were not sent by"), ("messaging", "is not 1 day(s)"), ("auth", "belongs to")):
        await eventually(lambda s=service, w=why: refusal(platform, s, w), f"{service} refusing a fact ({why})")

    assert [m.body for m in await history(stack, alice_token, cid)] == ["mine"]
    assert sent.channel_seq in stack.app("messaging").channels.get(cid).messages
    assert (await stack.login(alice_name)).user_id == alice.user_id  # her name and account stand


async def test_an_account_erasure_is_in_the_audit_chain_before_its_tombstone(
    stack: Stack, nats_server: NatsTestServer
) -> None:
    """Storage's word erases an account: a fact naming the account's own id and name is one auth
    must act on (an erasure can be resumed long after its request), so a stolen storage credential
    can still erase anyone. What it cannot do is erase unseen: auth writes an `account_erased`
    record, naming the fact, into the signed audit chain before the tombstone."""
    victim, _, victim_name = await register(stack, "victim")
    storage = (await nats_server.connect("storage")).jetstream()  # the stolen credential
    fact = AccountErasureDue(user_id=victim.user_id, username_key=hashlib.sha256(victim_name.encode()).hexdigest())
    subject = due_subject("auth", "erasure", victim.user_id)
    ack = await storage.publish(subject, envelope("erasure", victim.user_id, fact))

    async def erased() -> bool | None:
        try:
            await stack.login(victim_name)
        except grpc.aio.AioRpcError as refused:
            return refused.code() == grpc.StatusCode.UNAUTHENTICATED or None
        return None

    await eventually(erased, "the victim's account to be erased")
    platform = (await nats_server.connect("platform")).jetstream()
    sec = await platform.get_last_msg("SEC", f"parley.sec.account_erased.{victim.user_id}")
    record = open_payload(decode(sec.data or b""))
    assert isinstance(record, SecurityEventRecorded)
    assert (record.kind, record.user_id, record.username, record.actor) == (
        "account_erased",
        victim.user_id,
        victim_name,
        "service:auth",
    )
    assert f"STORE #{ack.seq}" in record.detail
    assert record.chain_index > 0
    assert record.signature
    tombstone = decode((await platform.get_last_msg("AUTH", username_subject(fact.username_key))).data or b"")
    assert isinstance(open_payload(tombstone), AccountErased)
    assert record.occurred_at_unix_ns <= tombstone.occurred_at.ToNanoseconds()  # recorded first
