"""What a forged event or a stolen storage credential achieves against the running services: nothing.

Every service in-process over real gRPC, a real nats-server and SQLite archive. No service's own
NATS user can publish on another owner's subjects any more (test_nats_permissions.py), so the
forged events of the first test are published with the operator's platform identity, the one
user that still can; the second test uses storage's own credential, as someone who stole it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from dataclasses import replace

import grpc
import nats.js.errors
import pytest
from google.protobuf.message import Message
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from parley.auth.v1 import auth_pb2, auth_pb2_grpc
from parley.auth.v1.events_pb2 import AccountErased, SecurityEventRecorded
from parley.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from parley.messaging.v1.events_pb2 import MemberJoined, MessagePosted
from parley.storage.v1 import storage_pb2, storage_pb2_grpc
from parley.storage.v1.events_pb2 import (
    AccountErasureDue,
    ChannelErasureDue,
    LogDeletionDue,
    LoggedEventRef,
    RetentionDue,
    SessionRevocationDue,
    SessionStepUpDue,
    SourceSlowdownDue,
)

from parley_core.bus import FOREIGN_EVENT
from parley_core.envelope import NewEvent, decode, open_payload, seal
from parley_core.grpc_channel import secure_channel
from parley_core.nats_accounts import local_subject
from parley_core.topology import (
    SERVICES,
    channel_subject,
    due_subject,
    parked_subject,
    username_subject,
)
from parley_storage.backup_point import ArchiveBehind, stream_point, wait_until_archived
from parley_testing.nats import NatsTestServer
from parley_testing.refusals import ErrorRecorder, refused
from parley_testing.stack import PASSWORD, TIMEOUT_S, Stack, bearer, start_service
from parley_testing.waiting import eventually, until

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


async def channel_with_a_message(stack: Stack, token: Token, body: str) -> tuple[str, messaging_pb2.ChatMessage]:
    """A new channel "kept" holding one message of `body`: the channel's id and the message as sent."""
    channel = await stack.gateway().CreateChannel(
        messaging_pb2.CreateChannelRequest(name="kept"), metadata=token, timeout=TIMEOUT_S
    )
    sent = await stack.gateway().SendMessage(
        messaging_pb2.PostMessageRequest(channel_id=channel.channel_id, body=body, idempotency_key=uuid.uuid4().hex),
        metadata=token,
        timeout=TIMEOUT_S,
    )
    return channel.channel_id, sent


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
    cid, sent = await channel_with_a_message(stack, alice_token, "mine")
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
    # Both owners refuse the erasure before they look at the posts or the name: no erasure of
    # mallory was requested through auth.
    for service, why in (
        ("messaging", "was requested through auth"),
        ("messaging", "no retention policy is recorded"),
        ("auth", "was requested through auth"),
    ):
        await eventually(lambda s=service, w=why: refusal(platform, s, w), f"{service} refusing a fact ({why})")

    assert [m.body for m in await history(stack, alice_token, cid)] == ["mine"]
    assert sent.channel_seq in stack.app("messaging").channels.get(cid).messages
    assert (await stack.login(alice_name)).user_id == alice.user_id  # her name and account stand


async def sec_record(js: JetStreamContext, kind: str, user_id: str) -> SecurityEventRecorded | None:
    try:
        raw = await js.get_last_msg("SEC", f"parley.sec.{kind}.{user_id}")
    except nats.js.errors.NotFoundError:
        return None
    record = open_payload(decode(raw.data or b""))
    assert isinstance(record, SecurityEventRecorded)
    return record


async def in_log(js: JetStreamContext, stream: str, seq: int) -> bool:
    try:
        await js.get_msg(stream, seq)
    except nats.js.errors.NotFoundError:
        return False
    return True


def deletion(stream: str, reason: str, user_id: str, *events: RawStreamMsg) -> LogDeletionDue:
    refs = [LoggedEventRef(stream_seq=e.seq, event_id=decode(e.data or b"").event_id) for e in events]
    return LogDeletionDue(stream=stream, reason=reason, user_id=user_id, events=refs)


async def test_a_stolen_storage_credential_erases_no_account_auth_was_not_asked_to_erase(
    stack: Stack, nats_server: NatsTestServer
) -> None:
    """Storage's word alone erases nobody: auth acts on an AccountErasureDue, or deletes from AUTH,
    only for an account whose erasure was requested through auth itself; anything else is an
    audited refusal that changes nothing."""
    victim, _, victim_name = await register(stack, "victim")
    storage = (await nats_server.connect("storage")).jetstream()  # the stolen credential
    platform = (await nats_server.connect("platform")).jetstream()
    name_key = hashlib.sha256(victim_name.encode()).hexdigest()
    registration = await platform.get_last_msg("AUTH", username_subject(name_key))
    erase = AccountErasureDue(user_id=victim.user_id, username_key=name_key)
    forged = await storage.publish(
        due_subject("auth", "erasure", victim.user_id), envelope("erasure", victim.user_id, erase)
    )
    delete = deletion("AUTH", "erasure", victim.user_id, registration)
    await storage.publish(due_subject("auth", "deletion", "forged"), envelope("deletion", "forged", delete))

    refused = await eventually(
        lambda: sec_record(platform, "account_erasure_refused", victim.user_id), "auth's audited refusal"
    )
    assert f"STORE #{forged.seq}" in refused.detail
    assert "no erasure of this account was requested through auth" in refused.detail
    assert refused.chain_index > 0
    assert refused.signature
    await eventually(lambda: sec_record(platform, "log_deletion_refused", victim.user_id), "the deletion refused")
    await eventually(lambda: refusal(platform, "auth", "was requested through auth"), "the erasure fact parked")
    await eventually(lambda: refusal(platform, "auth", "was not erased by auth"), "the deletion fact parked")

    assert await sec_record(platform, "account_erased", victim.user_id) is None
    assert (await platform.get_last_msg("AUTH", username_subject(name_key))).seq == registration.seq  # no tombstone
    assert await in_log(platform, "AUTH", registration.seq)
    assert (await stack.login(victim_name)).user_id == victim.user_id
    assert victim.user_id not in stack.app("auth").erased_users


async def test_storages_user_may_not_delete_from_auth_or_msg(stack: Stack, nats_server: NatsTestServer) -> None:
    _, token, _ = await register(stack, "alice")
    channel = await stack.gateway().CreateChannel(
        messaging_pb2.CreateChannelRequest(name="kept"), metadata=token, timeout=TIMEOUT_S
    )
    platform = (await nats_server.connect("platform")).jetstream()
    created = await platform.get_last_msg("MSG", channel_subject(channel.channel_id))
    errors = ErrorRecorder()
    storage = (await nats_server.connect("storage", error_cb=errors.callback)).jetstream()  # the stolen credential
    for stream, seq in (("MSG", created.seq), ("AUTH", 1)):
        deleting = storage.delete_msg(stream, seq)
        await refused(deleting, errors, local_subject("storage", f"$JS.API.STREAM.MSG.DELETE.{stream}"))
        assert await in_log(platform, stream, seq)


async def test_the_owners_delete_only_what_an_erasure_or_a_removal_legitimately_covers(
    stack: Stack, nats_server: NatsTestServer
) -> None:
    """A real erasure (requested through auth, audited before its tombstone), then forged deletion
    facts on storage's credential: each names an event the fact does not cover, and the owner
    refuses it whole."""
    carol, carol_token, carol_name = await register(stack, "carol")
    bob, bob_token, _ = await register(stack, "bob")
    channel = await stack.gateway().CreateChannel(
        messaging_pb2.CreateChannelRequest(name="talk"), metadata=bob_token, timeout=TIMEOUT_S
    )
    cid = channel.channel_id
    await stack.gateway().JoinChannel(
        messaging_pb2.JoinChannelRequest(channel_id=cid), metadata=carol_token, timeout=TIMEOUT_S
    )
    platform = (await nats_server.connect("platform")).jetstream()
    posts = []
    for who, body in ((bob_token, "bob's first"), (carol_token, "carol's"), (bob_token, "bob's last")):
        request = messaging_pb2.PostMessageRequest(channel_id=cid, body=body, idempotency_key=uuid.uuid4().hex)
        await stack.gateway().SendMessage(request, metadata=who, timeout=TIMEOUT_S)
        posts.append(await platform.get_last_msg("MSG", channel_subject(cid)))
    await eventually(lambda: _count(stack, bob_token, cid, 3), "three messages archived")

    auth = auth_pb2_grpc.AuthServiceStub(stack.internal("auth", identity="platform"))
    await auth.RequestErasure(auth_pb2.AccountActionRequest(user_id=carol.user_id, reason="art. 17"))
    operator = storage_pb2_grpc.StorageArchiveServiceStub(stack.internal("storage", identity="platform"))
    erased = await operator.EraseUserData(storage_pb2.EraseUserDataRequest(user_id=carol.user_id), timeout=TIMEOUT_S)
    assert erased.events_deleted_from_log >= 2  # her registration and her post, deleted by their owners
    assert not await in_log(platform, "MSG", posts[1].seq)
    requested = await sec_record(platform, "account_erasure_requested", carol.user_id)
    tombstoned = await sec_record(platform, "account_erased", carol.user_id)
    assert requested is not None
    assert tombstoned is not None
    assert (requested.actor, requested.username, requested.detail) == ("platform", carol_name, "art. 17")
    assert requested.chain_index < tombstoned.chain_index
    carol_key = hashlib.sha256(carol_name.encode()).hexdigest()
    tombstone = decode((await platform.get_last_msg("AUTH", username_subject(carol_key))).data or b"")
    assert isinstance(open_payload(tombstone), AccountErased)
    assert tombstoned.occurred_at_unix_ns <= tombstone.occurred_at.ToNanoseconds()  # recorded first

    request = messaging_pb2.PostMessageRequest(channel_id=cid, body="bob's newest", idempotency_key=uuid.uuid4().hex)
    await stack.gateway().SendMessage(request, metadata=bob_token, timeout=TIMEOUT_S)
    newest = await platform.get_last_msg("MSG", channel_subject(cid))

    storage = (await nats_server.connect("storage")).jetstream()  # the stolen credential
    # Dave's erasure is requested (auth recorded it), so the check that remains is whose posts.
    dave, _, _ = await register(stack, "dave")
    await auth.RequestErasure(auth_pb2.AccountActionRequest(user_id=dave.user_id))
    marked = ChannelErasureDue(user_id=dave.user_id, channel_id=cid, channel_seqs=[1])
    forged: list[tuple[str, Message, str]] = [
        ("bob's post, marked for dave's erasure", marked, "were not sent by"),
        (
            "bob's post, for carol's erasure",
            deletion("MSG", "erasure", carol.user_id, posts[0]),
            f"is not {carol.user_id}'s own",
        ),
        ("bob's, for bob (never erased)", deletion("MSG", "erasure", bob.user_id, posts[0]), "requested through auth"),
        ("a text nobody redacted", deletion("MSG", "removed", "", posts[0]), "neither redacted nor removed"),
        ("the channel's newest event", deletion("MSG", "removed", "", newest), "is the newest"),
    ]
    for n, (_, fact, _) in enumerate(forged):
        await storage.publish(due_subject("messaging", "deletion", f"forged{n}"), envelope("deletion", "x", fact))
    for what, _, why in forged:
        await eventually(lambda w=why: refusal(platform, "messaging", w), f"messaging refusing {what}")
    assert await in_log(platform, "MSG", posts[0].seq)
    assert await in_log(platform, "MSG", newest.seq)
    await eventually(lambda: _count(stack, bob_token, cid, 4), "bob's newest archived")
    assert [m.body for m in await history(stack, bob_token, cid)] == ["bob's first", "", "bob's last", "bob's newest"]


async def _count(stack: Stack, token: Token, channel_id: str, n: int) -> bool | None:
    return True if len(await history(stack, token, channel_id)) == n else None


async def test_a_stolen_storage_credential_cannot_expire_a_channel_no_retention_policy_covers(
    stack: Stack, nats_server: NatsTestServer
) -> None:
    """A RetentionDue for a channel with no retention policy: its messages older than a day stay.
    Then the operator sets a 30-day policy (messaging records it, on MSG, where storage cannot
    write): a fact with a shorter cutoff is refused too, and only one the policy covers expires."""
    _, token, _ = await register(stack, "alice")
    cid, sent = await channel_with_a_message(stack, token, "old")
    messaging = stack.app("messaging")
    posted_at = time.time_ns()
    messaging.storage_due._now_ns = lambda: posted_at + 2 * NS_PER_DAY  # the message is two days old
    storage = (await nats_server.connect("storage")).jetstream()  # the stolen credential
    fact = RetentionDue(
        channel_id=cid, channel_seqs=[sent.channel_seq], retention_days=1, sent_before_unix_ns=posted_at
    )
    await storage.publish(due_subject("messaging", "expiry", cid), envelope("retention", cid, fact))

    platform = (await nats_server.connect("platform")).jetstream()

    async def decided() -> str | None:  # refused, or (the hole) marked expired
        if sent.channel_seq not in messaging.channels.get(cid).messages:
            return "expired"
        return await refusal(platform, "messaging", "retention policy")

    assert await eventually(decided, "messaging deciding on the fact") != "expired"
    assert sent.channel_seq in messaging.channels.get(cid).messages
    assert [m.body for m in await history(stack, token, cid)] == ["old"]

    assert "no retention policy is recorded" in (await refusal(platform, "messaging", "retention policy") or "")

    await stack.set_retention(cid, 30)  # nothing is 30 days old by storage's (real) clock
    assert messaging.channels.get(cid).retention_days == 30
    shorter = RetentionDue(
        channel_id=cid, channel_seqs=[sent.channel_seq], retention_days=1, sent_before_unix_ns=posted_at
    )
    await storage.publish(due_subject("messaging", "expiry", cid), envelope("retention", cid, shorter))
    await eventually(lambda: refusal(platform, "messaging", "is not 30 day(s)"), "messaging refusing a 1-day cutoff")
    assert sent.channel_seq in messaging.channels.get(cid).messages

    messaging.storage_due._now_ns = lambda: posted_at + 31 * NS_PER_DAY  # now the policy covers it
    covered = RetentionDue(
        channel_id=cid, channel_seqs=[sent.channel_seq], retention_days=30, sent_before_unix_ns=posted_at + 1
    )
    await storage.publish(due_subject("messaging", "expiry", cid), envelope("retention", cid, covered))
    await until(lambda: sent.channel_seq not in messaging.channels.get(cid).messages, "the covered expiry")


async def test_a_stolen_storage_credential_cannot_revoke_step_up_or_slow_without_a_findings_evidence(
    stack: Stack, nats_server: NatsTestServer
) -> None:
    """The detector's responses, forged: a revocation and a step-up of an ordinary session (its
    account's only one, used from one address) and a slow-down of an address nobody failed a
    login from. Auth finds no evidence of any rule in its own records, refuses each on the audit
    trail and parks it: the session works, the address logs in."""
    victim, token, name = await register(stack, "victim")
    storage = (await nats_server.connect("storage")).jetstream()  # the stolen credential
    platform = (await nats_server.connect("platform")).jetstream()
    sid = victim.session_id
    forged: list[tuple[str, str, Message]] = [
        (
            "revoke",
            sid,
            SessionRevocationDue(session_id=sid, user_id=victim.user_id, anomaly_event_id="f1", reason="x"),
        ),
        ("stepup", sid, SessionStepUpDue(session_id=sid, user_id=victim.user_id, anomaly_event_id="f2", reason="x")),
        (
            "slow",
            "f3",
            SourceSlowdownDue(source="ipv4:127.0.0.1", until_unix=time.time() + 86_400, anomaly_event_id="f3"),
        ),
    ]
    for kind, key, fact in forged:
        await storage.publish(due_subject("auth", kind, key), envelope("session", key, fact))

    for what in ("revocation", "step-up", "slow-down"):
        await eventually(
            lambda w=what: refusal(platform, "auth", f"no evidence for the {w}"), f"auth refusing the {what}"
        )
    refused = await eventually(
        lambda: sec_record(platform, "anomaly_response_refused", victim.user_id), "the refusal on the audit trail"
    )
    assert "no evidence" in refused.detail
    await eventually(lambda: sec_record(platform, "anomaly_response_refused", "unknown"), "the slow-down's refusal")
    assert await sec_record(platform, "session_revoked", victim.user_id) is None
    assert await sec_record(platform, "step_up_required", victim.user_id) is None
    session = stack.app("auth").sessions.get(sid)
    assert not session.revoked
    assert not session.step_up_required
    sessions = await stack.gateway().ListSessions(auth_pb2.ListSessionsRequest(), metadata=token, timeout=TIMEOUT_S)
    assert sid in [s.session_id for s in sessions.sessions]  # the token still works
    assert (await stack.login(name)).user_id == victim.user_id  # the address is not held back


async def test_a_stolen_messaging_credential_deleting_a_channels_newest_message_frees_no_number(
    stack: Stack, nats_server: NatsTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Messaging may delete from MSG (erasure, retention, redaction reach the log through it), so
    its credential can delete a channel's newest post. An instance that rebuilds from that log
    (a restart) finds the lost number in the archive and numbers the next message after it."""
    caplog.set_level(logging.ERROR, logger="parley_messaging.log_tail")
    _, token, _ = await register(stack, "alice")
    channel = await stack.gateway().CreateChannel(
        messaging_pb2.CreateChannelRequest(name="numbers"), metadata=token, timeout=TIMEOUT_S
    )
    cid = channel.channel_id
    for body in ("one", "two"):
        request = messaging_pb2.PostMessageRequest(channel_id=cid, body=body, idempotency_key=uuid.uuid4().hex)
        await stack.gateway().SendMessage(request, metadata=token, timeout=TIMEOUT_S)
    await eventually(lambda: _count(stack, token, cid, 2), "both messages archived")
    platform = (await nats_server.connect("platform")).jetstream()
    newest = await platform.get_last_msg("MSG", channel_subject(cid))
    messaging_js = (await nats_server.connect("messaging")).jetstream()  # the stolen credential
    assert await messaging_js.delete_msg("MSG", newest.seq)
    assert not await in_log(platform, "MSG", newest.seq)
    # The running instance still holds #2: its append guard fails, and nothing is numbered twice.
    request = messaging_pb2.PostMessageRequest(channel_id=cid, body="frozen", idempotency_key=uuid.uuid4().hex)
    with pytest.raises(grpc.aio.AioRpcError) as frozen:
        await stack.gateway().SendMessage(request, metadata=token, timeout=TIMEOUT_S)
    assert frozen.value.code() == grpc.StatusCode.UNAVAILABLE

    restarted = await start_service(stack, nats_server, "messaging", registration="open")
    try:
        link = secure_channel(stack.pki, identity="gateway", address=f"127.0.0.1:{restarted.port}", peer="messaging")
        stack.channels.append(link)
        request = messaging_pb2.PostMessageRequest(channel_id=cid, body="three", idempotency_key=uuid.uuid4().hex)
        sent = await messaging_pb2_grpc.MessagingServiceStub(link).PostMessage(
            request, metadata=token, timeout=TIMEOUT_S
        )
    finally:
        await restarted.shutdown()
    assert sent.channel_seq == 3  # not a second #2
    gaps = [r for r in caplog.records if getattr(r, "security_event", "") == "event_log_gap"]
    assert [(r.channel_id, r.lost_seqs) for r in gaps] == [(cid, [newest.seq])]  # type: ignore[attr-defined]
    # The archive kept what the log lost, and the new message shows beside it, not hidden behind it.
    await eventually(lambda: _count(stack, token, cid, 3), "three messages in history")
    assert [m.body for m in await history(stack, token, cid)] == ["one", "two", "three"]


async def forge_post_over(js: JetStreamContext, cid: str, *, sender_id: str, channel_seq: int) -> int:
    """A MessagePosted numbered like a message that exists, published with messaging's stolen credential."""
    forged = MessagePosted(
        channel_id=cid,
        message_id=uuid.uuid4().hex,
        sender_id=sender_id,
        sender_name="alice",
        channel_seq=channel_seq,
        body="forged words",
        idempotency_key="forged",
    )
    return (await js.publish(channel_subject(cid), envelope("channel", cid, forged))).seq


async def test_a_stolen_messaging_credential_cannot_post_over_a_message_with_its_number(
    stack: Stack, nats_server: NatsTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A forged MessagePosted numbered like a message that exists halts messaging's projection
    (it would overwrite the message there) and is parked by storage's archive: neither replaces
    the original's text, row or count. A second copy of the original post changes nothing."""
    caplog.set_level(logging.ERROR, logger="parley_core.projection_dispatch")
    alice, token, _ = await register(stack, "alice")
    cid, first = await channel_with_a_message(stack, token, "the original")
    await eventually(lambda: _count(stack, token, cid, 1), "the message archived")
    platform = (await nats_server.connect("platform")).jetstream()
    original = await platform.get_last_msg("MSG", channel_subject(cid))
    messaging_js = (await nats_server.connect("messaging")).jetstream()  # the stolen credential
    # A copy of the original post (a publisher's retry past the de-duplication window): harmless.
    copy = (await messaging_js.publish(channel_subject(cid), original.data)).seq
    await until(lambda: stack.app("storage").progress.archived("MSG") >= copy, "storage archived the copy")
    request = messaging_pb2.PostMessageRequest(channel_id=cid, body="after the copy", idempotency_key="k2")
    assert (await stack.gateway().SendMessage(request, metadata=token, timeout=TIMEOUT_S)).channel_seq == 2

    seq = await forge_post_over(messaging_js, cid, sender_id=alice.user_id, channel_seq=first.channel_seq)

    messaging = stack.app("messaging")
    await until(lambda: messaging.ctx.bus.halted is not None, "messaging's projection halted")
    assert messaging.ctx.bus.halted.stream_seq == seq
    assert [r for r in caplog.records if f"stream MSG, sequence {seq}," in r.getMessage()]
    assert messaging.channels.get(cid).messages[first.channel_seq].current.body == "the original"
    copy_parked = await eventually(lambda: parked(platform, parked_subject("storage", "MSG")), "storage parked it")
    assert copy_parked.headers is not None
    assert copy_parked.headers["Parley-Original-Sequence"] == str(seq)
    assert "not archived over it" in copy_parked.headers["Parley-Parked-Reason"]
    assert [m.body for m in await history(stack, token, cid)] == ["the original", "after the copy"]
    stored, _ = await stack.app("storage").archive.stream_events("MSG", after_seq=seq - 1, limit=1)
    assert not stored or stored[0].stream_seq != seq  # never archived


async def park_a_forged_post(
    stack: Stack, nats_server: NatsTestServer, alice: auth_pb2.LoginResponse, cid: str, channel_seq: int
) -> int:
    """Append, with the stolen messaging credential, a post over message `channel_seq` of the
    channel, which storage's archive refuses and parks; returns its MSG sequence once parked."""
    messaging_js = (await nats_server.connect("messaging")).jetstream()
    seq = await forge_post_over(messaging_js, cid, sender_id=alice.user_id, channel_seq=channel_seq)
    platform = (await nats_server.connect("platform")).jetstream()

    async def parked_it() -> bool | None:
        copy = await parked(platform, parked_subject("storage", "MSG"))
        return True if copy and (copy.headers or {}).get("Parley-Original-Sequence") == str(seq) else None

    await eventually(parked_it, "storage parked it")
    return seq


async def test_a_post_storage_parks_holds_back_no_history_read_of_its_channel(
    stack: Stack, nats_server: NatsTestServer
) -> None:
    """A parked event is consumed: the archive's position passes it, in memory and in SQL. A
    forged post, its channel's newest event and the stream's last, parked by storage, leaves a
    history read of the channel nothing to wait for (it would wait the freshness timeout each time)."""
    alice, token, _ = await register(stack, "alice")
    cid, first = await channel_with_a_message(stack, token, "the original")
    await eventually(lambda: _count(stack, token, cid, 1), "the message archived")
    seq = await park_a_forged_post(stack, nats_server, alice, cid, first.channel_seq)
    platform = (await nats_server.connect("platform")).jetstream()

    storage = stack.app("storage")
    await until(lambda: storage.progress.archived("MSG") >= seq, "the archive's progress past the parked post")
    assert (await storage.archive.positions())["MSG"] >= seq  # where a restart starts its progress
    assert (await platform.stream_info("MSG")).state.last_seq == seq  # passed by parking, not by a later event
    assert [m.body for m in await history(stack, token, cid)] == ["the original"]


async def test_retention_applies_to_a_channel_whose_newest_event_storage_parked(
    stack: Stack, nats_server: NatsTestServer
) -> None:
    """Retention waits for the archive to reach the channel's newest event. One storage parked
    is never archived, but passed for good: SetRetentionPolicy (and the hourly job) go on, where
    they answered UNAVAILABLE after 20 s every time."""
    alice, token, _ = await register(stack, "alice")
    cid, first = await channel_with_a_message(stack, token, "the original")
    assert (await stack.set_retention(cid, 30)).removed_now == 0  # messaging's ChannelRetentionSet, archived
    seq = await park_a_forged_post(stack, nats_server, alice, cid, first.channel_seq)
    platform = (await nats_server.connect("platform")).jetstream()
    assert (await platform.get_last_msg("MSG", channel_subject(cid))).seq == seq  # the channel's newest

    operator = storage_pb2_grpc.StorageArchiveServiceStub(stack.internal("storage", identity="platform"))
    request = storage_pb2.SetRetentionPolicyRequest(channel_id=cid, days=30)
    assert (await operator.SetRetentionPolicy(request, timeout=TIMEOUT_S)).removed_now == 0
    assert await stack.app("storage").retention.apply(now_ns=time.time_ns(), timeout=TIMEOUT_S, channel_id=cid) == 0


async def test_a_backup_point_counts_an_event_storage_parked_as_covered(
    stack: Stack, nats_server: NatsTestServer
) -> None:
    """`parley backup create` waits until the archive holds every event up to the point. A parked
    one is never archived: its copy on PARKED (by storage's archive consumer) covers it, where the
    backup failed with ArchiveBehind after its timeout. An event neither archived nor parked
    still holds the backup back."""
    alice, token, _ = await register(stack, "alice")
    cid, first = await channel_with_a_message(stack, token, "the original")
    await eventually(lambda: _count(stack, token, cid, 1), "the message archived")
    seq = await park_a_forged_post(stack, nats_server, alice, cid, first.channel_seq)
    platform = (await nats_server.connect("platform")).jetstream()
    point = await stream_point(platform)
    assert point["MSG"].last_seq == seq
    engine = stack.app("storage").archive.engine

    notes: list[str] = []
    await asyncio.to_thread(wait_until_archived, engine, point, timeout_s=TIMEOUT_S, note=notes.append)
    assert notes == []  # nothing missing, nothing to wait for

    unarchived = replace(point["MSG"], last_seq=seq + 1, messages=point["MSG"].messages + 1)  # one more, on its way
    with pytest.raises(ArchiveBehind, match="'MSG': 1"):
        wait_until_archived(engine, {**point, "MSG": unarchived}, timeout_s=0, note=notes.append)
