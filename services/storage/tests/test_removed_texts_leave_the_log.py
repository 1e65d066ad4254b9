"""Retention and redaction reach the JetStream log: the removed posts and edits are deleted from
MSG (and PARKED), while history, messaging and the numbering stay right; the retention policies
can be read back.

Real nats-server, every service in-process over real gRPC, a real SQLite archive (the stack),
and for the resumed clean-up the archive on SQLite and PostgreSQL against a real broker.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

import grpc
import nats.js.errors
import pytest
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from nats.js import JetStreamContext
from parley.auth.v1 import auth_pb2
from parley.messaging.v1 import messaging_pb2
from parley.messaging.v1.events_pb2 import (
    ChannelCreated,
    MessageEdited,
    MessagePosted,
    MessageRedacted,
    MessagesExpired,
    ReactionAdded,
)
from parley.storage.v1 import storage_pb2, storage_pb2_grpc
from parley.storage.v1.events_pb2 import LogDeletionDue
from sqlalchemy import insert

from parley_core.bus import EventBus, ReceivedEvent
from parley_core.envelope import NewEvent, decode, open_payload
from parley_core.event_log import position_of
from parley_core.log_deletion import delete_checked
from parley_core.topology import CONSUMERS, STREAMS, channel_subject, parked_subject
from parley_storage.archive import NS_PER_DAY, SqlEventArchive
from parley_storage.log_cleanup import delete_removed_texts
from parley_storage.schema import log_deletions
from parley_testing.nats import NatsTestServer
from parley_testing.stack import PASSWORD, TIMEOUT_S, Stack, bearer, start_service
from parley_testing.waiting import eventually, until

Token = tuple[tuple[str, str]]


async def register(stack: Stack) -> tuple[auth_pb2.LoginResponse, Token]:
    name = f"alice{uuid.uuid4().hex[:8]}"
    await stack.gateway().Register(auth_pb2.RegisterRequest(username=name, password=PASSWORD), timeout=TIMEOUT_S)
    login = await stack.login(name)
    return login, bearer(login.access_token)


async def new_channel(stack: Stack, token: Token) -> str:
    request = messaging_pb2.CreateChannelRequest(name="removals")
    return (await stack.gateway().CreateChannel(request, metadata=token, timeout=TIMEOUT_S)).channel_id


async def send(stack: Stack, token: Token, channel_id: str, body: str) -> int:
    request = messaging_pb2.PostMessageRequest(channel_id=channel_id, body=body, idempotency_key=uuid.uuid4().hex)
    return (await stack.gateway().SendMessage(request, metadata=token, timeout=TIMEOUT_S)).channel_seq


async def edit(stack: Stack, token: Token, channel_id: str, channel_seq: int, body: str) -> None:
    request = messaging_pb2.EditMessageRequest(channel_id=channel_id, channel_seq=channel_seq, body=body)
    await stack.gateway().EditMessage(request, metadata=token, timeout=TIMEOUT_S)


async def history(stack: Stack, token: Token, channel_id: str) -> list[tuple[int, str, bool]]:
    request = storage_pb2.GetChannelHistoryRequest(channel_id=channel_id, limit=100)
    page = await stack.gateway().GetHistory(request, metadata=token, timeout=TIMEOUT_S)
    return [(m.channel_seq, m.body, m.redacted) for m in page.messages]


async def newest(js: JetStreamContext, channel_id: str) -> int:
    """Stream sequence of the channel's newest event (the test is the channel's only writer)."""
    return int((await js.get_last_msg("MSG", channel_subject(channel_id))).seq or 0)


async def in_log(js: JetStreamContext, stream: str, seq: int) -> bool:
    try:
        await js.get_msg(stream, seq=seq)
    except nats.js.errors.NotFoundError:
        return False
    return True


async def all_gone(js: JetStreamContext, stream: str, seqs: list[int]) -> bool | None:
    return None if [s for s in seqs if await in_log(js, stream, s)] else True


async def post_sent_days_ago(stack: Stack, user: auth_pb2.LoginResponse, channel_id: str, days: float) -> int:
    """A post as messaging appends it, but sent `days` ago; returns its number."""
    messaging = stack.app("messaging")
    channel = messaging.channels.get(channel_id)
    sent = Timestamp()
    sent.FromNanoseconds(time.time_ns() - int(days * NS_PER_DAY))
    payload = MessagePosted(
        channel_id=channel_id,
        message_id=uuid.uuid4().hex,
        sender_id=user.user_id,
        sender_name="alice",
        channel_seq=channel.last_seq + 1,
        body="old text",
        idempotency_key=uuid.uuid4().hex,
        sent_at=sent,
    )
    event = NewEvent(aggregate_type="channel", aggregate_id=channel_id, payload=payload, actor=user.user_id)
    await messaging.event_log.append(channel_subject(channel_id), [event], position_of(channel))
    return int(payload.channel_seq)


async def test_retention_removes_an_expired_message_from_history_messaging_and_the_log(
    stack: Stack, nats_server: NatsTestServer
) -> None:
    alice, token = await register(stack)
    cid = await new_channel(stack, token)
    js = (await nats_server.connect("platform")).jetstream()
    assert await send(stack, token, cid, "recent text") == 1
    recent_at = await newest(js, cid)
    # The newest message is the old one: dropping it must not free its number.
    assert await post_sent_days_ago(stack, alice, cid, days=40) == 2
    post_at = await newest(js, cid)
    await edit(stack, token, cid, 2, "old text, edited today")
    edit_at = await newest(js, cid)

    assert (await stack.set_retention(cid, 30)).removed_now == 1
    assert await history(stack, token, cid) == [(1, "recent text", False)]  # at once, when the call returns

    marker_at = await newest(js, cid)
    marker = decode((await js.get_msg("MSG", seq=marker_at)).data or b"")
    assert marker.event_type == MessagesExpired.DESCRIPTOR.full_name
    assert list(MessagesExpired.FromString(marker.payload).channel_seqs) == [2]
    channel = stack.app("messaging").channels.get(cid)
    await until(lambda: 2 not in channel.messages, "messaging to forget the expired message")
    assert channel.last_seq == 2
    await eventually(lambda: all_gone(js, "MSG", [post_at, edit_at]), "the expired post and edit to leave the log")
    assert await in_log(js, "MSG", recent_at)
    assert await in_log(js, "MSG", marker_at)

    # A repeated call finds nothing more and appends no second marker (nor a second policy).
    assert (await stack.set_retention(cid, 30)).removed_now == 0
    assert await newest(js, cid) == marker_at
    assert await send(stack, token, cid, "after retention") == 3  # not a second #2
    operator = storage_pb2_grpc.StorageArchiveServiceStub(stack.internal("storage", identity="platform"))
    for bad, days, code in (
        ("parley.msg.>", 30, grpc.StatusCode.INVALID_ARGUMENT),
        (uuid.uuid4().hex, 30, grpc.StatusCode.NOT_FOUND),
        (cid, 1, grpc.StatusCode.FAILED_PRECONDITION),  # not what messaging recorded: applies nothing
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await operator.SetRetentionPolicy(
                storage_pb2.SetRetentionPolicyRequest(channel_id=bad, days=days), timeout=TIMEOUT_S
            )
        assert refused.value.code() == code
    assert "messaging has recorded 30 retention days" in (refused.value.details() or "")


async def test_the_operator_and_an_auditor_list_the_retention_policies(stack: Stack) -> None:
    _, member = await register(stack)
    first, second = sorted([await new_channel(stack, member), await new_channel(stack, member)])
    operator = storage_pb2_grpc.StorageArchiveServiceStub(stack.internal("storage", identity="platform"))
    before = time.time_ns()
    for cid, days in ((second, 7), (first, 30)):
        await stack.set_retention(cid, days)

    await stack.create_user(auditor := f"aud{uuid.uuid4().hex[:8]}", "security-auditor")
    auditor_token = bearer((await stack.login(auditor)).access_token)
    archive = storage_pb2_grpc.StorageArchiveServiceStub(stack.internal("storage"))  # as the gateway forwards
    listing = storage_pb2.ListRetentionPoliciesRequest()
    for listed in (
        await operator.ListRetentionPolicies(listing, timeout=TIMEOUT_S),
        await archive.ListRetentionPolicies(listing, metadata=auditor_token, timeout=TIMEOUT_S),
    ):
        assert [(p.channel_id, p.days, p.set_by) for p in listed.policies] == [
            (first, 30, "platform"),
            (second, 7, "platform"),
        ]
        assert all(before <= p.set_at.ToNanoseconds() <= time.time_ns() for p in listed.policies)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await archive.ListRetentionPolicies(listing, metadata=member, timeout=TIMEOUT_S)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "security-auditor" in (refused.value.details() or "")

    # Keeping a channel's messages forever again is no policy at all.
    await stack.set_retention(second, 0)
    listed = await operator.ListRetentionPolicies(listing, timeout=TIMEOUT_S)
    assert [p.channel_id for p in listed.policies] == [first]


async def test_a_redaction_deletes_the_post_and_its_edits_from_the_log_and_a_rebuild_keeps_the_number(
    stack: Stack, nats_server: NatsTestServer
) -> None:
    _, token = await register(stack)
    cid = await new_channel(stack, token)
    js = (await nats_server.connect("platform")).jetstream()
    assert await send(stack, token, cid, "kept text") == 1
    kept_at = await newest(js, cid)
    assert await send(stack, token, cid, "secret text") == 2
    post_at = await newest(js, cid)
    await edit(stack, token, cid, 2, "secret text, edited")
    edit_at = await newest(js, cid)
    # A consumer parked the post as poison: a copy in PARKED, with the headers bus.park sets.
    post = await js.get_msg("MSG", seq=post_at)
    origin = {"Parley-Original-Stream": "MSG", "Parley-Original-Sequence": str(post_at)}
    await js.publish(parked_subject("gateway", "MSG"), post.data or b"", headers=origin)
    request = messaging_pb2.RedactMessageRequest(channel_id=cid, channel_seq=2)
    await stack.gateway().RedactMessage(request, metadata=token, timeout=TIMEOUT_S)
    redaction_at = await newest(js, cid)

    await eventually(lambda: all_gone(js, "MSG", [post_at, edit_at]), "the redacted post and edit to leave the log")

    async def parked_copy_gone() -> bool | None:
        return True if (await js.stream_info("PARKED")).state.messages == 0 else None

    await eventually(parked_copy_gone, "the parked copy of the redacted post to be deleted")
    assert await in_log(js, "MSG", kept_at)
    assert await in_log(js, "MSG", redaction_at)

    # A messaging instance started now rebuilds from the stream with its holes.
    second = await start_service(stack, nats_server, "messaging", registration="open")
    try:
        rebuilt = second.app.app.channels.get(cid)
        assert (sorted(rebuilt.messages), rebuilt.last_seq) == ([1, 2], 2)
        assert (rebuilt.messages[2].current.redacted, rebuilt.messages[2].current.body) == (True, "")
    finally:
        await second.shutdown()
    assert await send(stack, token, cid, "after the redaction") == 3

    async def three_in_history() -> list[tuple[int, str, bool]] | None:
        found = await history(stack, token, cid)
        return found if len(found) == 3 else None

    shown = await eventually(three_in_history, "the new message in history")
    assert shown == [(1, "kept text", False), (2, "", True), (3, "after the redaction", False)]


async def test_a_clean_up_cut_short_is_finished_by_the_next_run(
    nats_server: NatsTestServer, archive: SqlEventArchive
) -> None:
    bus = EventBus(await nats_server.connect("platform"), service="platform", producer="test@0")
    await bus.ensure_streams(STREAMS)
    subject = channel_subject("c1")
    written: list[ReceivedEvent] = []

    async def append(payload: Message) -> int:
        event = NewEvent(aggregate_type="channel", aggregate_id="c1", payload=payload, actor="alice")
        seq = (
            await bus.append(subject, event, aggregate_version=len(written) + 1, expected_last_subject_seq=None)
        ).stream_seq
        raw = await bus.js.get_msg("MSG", seq=seq)
        written.append(ReceivedEvent(decode(raw.data or b""), subject, "MSG", seq, 1, {}))
        return seq

    await append(ChannelCreated(channel_id="c1", name="general", creator_id="alice"))
    kept = await append(MessagePosted(channel_id="c1", message_id="m1", sender_id="alice", channel_seq=1, body="kept"))
    post = await append(MessagePosted(channel_id="c1", message_id="m2", sender_id="alice", channel_seq=2, body="gone"))
    edited = await append(MessageEdited(channel_id="c1", message_id="m2", channel_seq=2, body="gone, edited"))
    redaction = await append(MessageRedacted(channel_id="c1", message_id="m2", channel_seq=2, redactor_id="alice"))
    await bus.js.publish(
        parked_subject("gateway", "MSG"),
        b"a parked copy",
        headers={"Parley-Original-Stream": "MSG", "Parley-Original-Sequence": str(edited)},
    )
    await archive.archive("storage-archive-msg", written)
    assert [(d.stream, d.stream_seq) for d in await archive.log_deletions(limit=10)] == [("MSG", post), ("MSG", edited)]
    # An earlier run deleted the post from the log and stopped before it could drop its rows.
    assert await bus.js.delete_msg("MSG", post)
    # A queued position that holds another event now (a log re-seeded since) is never deleted,
    # nor is the newest event of a subject (its marker should have followed it).
    await queue(archive, kept, "an-event-of-the-earlier-log")
    await queue(archive, redaction, written[-1].envelope.event_id)

    # With storage's own permissions: it asks, and messaging (its credentials, below) deletes.
    storage = EventBus(await nats_server.connect("storage"), service="storage", producer="storage@test")
    deleter = await messaging_deletes_what_is_due(nats_server)
    assert await delete_removed_texts(storage, archive) == 2  # the edit and its parked copy; the post was gone
    assert [d.stream_seq for d in await archive.log_deletions(limit=10)] == [redaction]
    assert not await in_log(bus.js, "MSG", edited)
    assert (await bus.js.stream_info("PARKED")).state.messages == 0
    assert await in_log(bus.js, "MSG", kept)
    assert await in_log(bus.js, "MSG", redaction)
    assert await delete_removed_texts(storage, archive) == 0
    await append(ReactionAdded(channel_id="c1", channel_seq=1, user_id="bob", emoji="+1"))
    assert await delete_removed_texts(storage, archive) == 1  # no longer the newest
    assert await archive.log_deletions(limit=10) == []
    assert not await in_log(bus.js, "MSG", redaction)
    await deleter.stop_consumers()
    for nc in (deleter.nc, storage.nc):
        await nc.close()


async def messaging_deletes_what_is_due(nats_server: NatsTestServer) -> EventBus:
    """Messaging's part, with its own NATS user on its durable consumer of STORE: it deletes what
    storage's facts name, with the checks every owner makes (the event named, never a subject's
    newest). Its own rules on top (only texts of redacted or removed messages) are tested with the
    real service in test_trust_boundaries.py."""
    bus = EventBus(await nats_server.connect("messaging"), service="messaging", producer="messaging@test")
    [spec] = [c for c in CONSUMERS if c.service == "messaging" and c.stream == "STORE"]

    async def delete(batch: Sequence[ReceivedEvent]) -> None:
        for event in batch:
            due = open_payload(event.envelope)
            if isinstance(due, LogDeletionDue):
                refs = [(int(r.stream_seq), r.event_id) for r in due.events]
                await delete_checked(bus.js, due.stream, refs, lambda item: None)

    await bus.consume(spec, delete)
    return bus


async def queue(archive: SqlEventArchive, stream_seq: int, event_id: str) -> None:
    """Queue a log position for deletion directly, as the archive does when it blanks a text."""
    row = {"stream": "MSG", "stream_seq": stream_seq, "event_id": event_id, "reason": "redacted", "recorded_at_ns": 0}
    await archive.run("queue a log deletion", lambda conn: conn.execute(insert(log_deletions).values(**row)))
