"""An erasure reaches the JetStream streams, and every service rebuilds correctly from them.

Real nats-server (its store not encrypted here, so a byte search of the stream files is
meaningful: the other user's text is found in them), every service in-process over real gRPC
and a real SQLite archive, restarted on the same broker and data folder.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import grpc
import pytest
from parley.auth.v1 import auth_pb2, auth_pb2_grpc
from parley.messaging.v1 import messaging_pb2
from parley.storage.v1 import storage_pb2, storage_pb2_grpc
from parley.storage.v1.events_pb2 import UserDataErased, UserDataErasedFromStreams

from parley_core.envelope import NewEvent, decode
from parley_core.pki import Pki
from parley_core.topology import channel_subject, parked_subject, privacy_subject
from parley_testing.nats import NatsTestServer
from parley_testing.stack import PASSWORD, TIMEOUT_S, Stack, bearer, start_stack, stop_stack
from parley_testing.waiting import eventually


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def stream_files(nats_dir: Path, *streams: str) -> list[Path]:
    """The files of those streams in the broker's JetStream store (messages, indexes)."""
    return [f for s in streams for folder in nats_dir.rglob(f"streams/{s}") for f in folder.rglob("*") if f.is_file()]


def holding(files: list[Path], needle: str) -> list[Path]:
    return [f for f in files if needle.encode() in _bytes_of(f)]


def _bytes_of(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except FileNotFoundError:  # a temporary file the server replaced while the folder was listed
        return b""


async def register(stack: Stack, name: str) -> auth_pb2.LoginResponse:
    await stack.gateway().Register(auth_pb2.RegisterRequest(username=name, password=PASSWORD), timeout=TIMEOUT_S)
    return await stack.login(name)


async def shared_channel(stack: Stack, owner: auth_pb2.LoginResponse, member: auth_pb2.LoginResponse, name: str) -> str:
    channel = await stack.gateway().CreateChannel(
        messaging_pb2.CreateChannelRequest(name=name), metadata=bearer(owner.access_token), timeout=TIMEOUT_S
    )
    await stack.gateway().JoinChannel(
        messaging_pb2.JoinChannelRequest(channel_id=channel.channel_id),
        metadata=bearer(member.access_token),
        timeout=TIMEOUT_S,
    )
    return channel.channel_id


async def send(stack: Stack, who: auth_pb2.LoginResponse, channel_id: str, body: str) -> int:
    sent = await stack.gateway().SendMessage(
        messaging_pb2.PostMessageRequest(channel_id=channel_id, body=body, idempotency_key=uuid.uuid4().hex),
        metadata=bearer(who.access_token),
        timeout=TIMEOUT_S,
    )
    return sent.channel_seq


async def history(stack: Stack, who: auth_pb2.LoginResponse, channel_id: str) -> list[messaging_pb2.ChatMessage]:
    page = await stack.gateway().GetHistory(
        storage_pb2.GetChannelHistoryRequest(channel_id=channel_id, limit=100),
        metadata=bearer(who.access_token),
        timeout=TIMEOUT_S,
    )
    return list(page.messages)


async def request_erasure(stack: Stack, user_id: str) -> None:
    """The operator's request, recorded by auth: auth acts on storage's erasure facts for no other."""
    auth = auth_pb2_grpc.AuthServiceStub(stack.internal("auth", identity="platform"))
    await auth.RequestErasure(auth_pb2.AccountActionRequest(user_id=user_id, reason="test"), timeout=TIMEOUT_S)


async def name_refused(stack: Stack, name: str) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.gateway().Register(auth_pb2.RegisterRequest(username=name, password=PASSWORD), timeout=TIMEOUT_S)
    return refused.value.code()


async def test_an_erasure_deletes_the_users_events_from_the_streams_and_services_rebuild(
    nats_server: NatsTestServer, pki: Pki, tmp_path: Path
) -> None:
    alice_name, bob_name = unique("alice"), unique("bob")
    alice_bodies = [unique("alicesecret-") for _ in range(3)]
    alice_edit, bob_body = unique("aliceedit-"), unique("bobtext-")
    alice_redacted = unique("aliceredacted-")
    stack, running = await start_stack(nats_server, pki, tmp_path, registration="open")
    try:
        alice, bob = await register(stack, alice_name), await register(stack, bob_name)
        cid = await shared_channel(stack, bob, alice, "erasure")
        # A second channel stays quiet after the erasure: its newest message, alice's, is deleted
        # and nothing is posted before the restart, so only the marker keeps its number taken.
        quiet_id = await shared_channel(stack, bob, alice, "quiet")
        assert await send(stack, bob, quiet_id, unique("bobquiet-")) == 1
        # ...and she redacted it: the archive drops its copy, and storage deletes it from the log.
        assert await send(stack, alice, quiet_id, alice_redacted) == 2
        await stack.gateway().RedactMessage(
            messaging_pb2.RedactMessageRequest(channel_id=quiet_id, channel_seq=2),
            metadata=bearer(alice.access_token),
            timeout=TIMEOUT_S,
        )
        assert await send(stack, alice, cid, alice_bodies[0]) == 1
        assert await send(stack, bob, cid, bob_body) == 2
        assert await send(stack, alice, cid, alice_bodies[1]) == 3
        await stack.gateway().EditMessage(
            messaging_pb2.EditMessageRequest(channel_id=cid, channel_seq=3, body=alice_edit),
            metadata=bearer(alice.access_token),
            timeout=TIMEOUT_S,
        )
        # Alice's post is the channel's newest message: deleting it must not free its number.
        assert await send(stack, alice, cid, alice_bodies[2]) == 4
        # A consumer parked that event as poison: a copy in PARKED, with the headers bus.park sets.
        js = (await nats_server.connect("platform")).jetstream()
        post = await js.get_last_msg("MSG", channel_subject(cid))
        await js.publish(
            parked_subject("gateway", "MSG"),
            post.data or b"",
            headers={"Parley-Original-Stream": "MSG", "Parley-Original-Sequence": str(post.seq)},
        )

        async def all_archived() -> list[messaging_pb2.ChatMessage] | None:
            found = await history(stack, bob, cid)
            return found if len(found) == 4 and found[2].body == alice_edit else None

        await eventually(all_archived, "the four messages and the edit in the archive", TIMEOUT_S)

        async def redaction_reached_the_log() -> bool | None:
            return None if holding(stream_files(tmp_path / "nats", "MSG"), alice_redacted) else True

        await eventually(redaction_reached_the_log, "the redacted text to leave the log", TIMEOUT_S)
        files = stream_files(tmp_path / "nats", "AUTH", "MSG", "PARKED")
        for needle in (*alice_bodies, alice_edit, alice_name):
            assert holding(files, needle), f"{needle} should be in the streams before the erasure"

        operator = storage_pb2_grpc.StorageArchiveServiceStub(stack.internal("storage", identity="platform"))
        started = time.perf_counter()
        await request_erasure(stack, alice.user_id)
        erased = await operator.EraseUserData(
            storage_pb2.EraseUserDataRequest(user_id=alice.user_id, reason="test"), timeout=TIMEOUT_S
        )
        print(
            f"\n[erasure] {erased.events_deleted_from_log} events deleted from the log,"
            f" {(time.perf_counter() - started) * 1000:.0f} ms for EraseUserData"
        )
        # Her registration, three posts and one edit at least (her account events too).
        assert erased.events_deleted_from_log >= 5

        files = stream_files(tmp_path / "nats", "AUTH", "MSG", "PARKED")
        for needle in (*alice_bodies, alice_edit, alice_redacted, alice_name):
            assert not holding(files, needle), f"{needle} still in the JetStream store: {holding(files, needle)}"
        assert holding(files, bob_body)  # the search does see plaintext: bob's text is still there
        assert holding(files, bob_name)
        archive_db = stack.app("storage").archive.engine.url.database
        assert archive_db
        for needle in (*alice_bodies, alice_edit, alice_redacted, alice_name):
            assert needle.encode() not in Path(archive_db).read_bytes()

        # The running services follow at once: the number stays taken, the name too.
        assert await send(stack, bob, cid, unique("bobafter-")) == 5
        # Her tokens from before the erasure are refused at once, by every service.
        with pytest.raises(grpc.aio.AioRpcError) as old_token:
            await send(stack, alice, cid, unique("aliceafter-"))
        assert old_token.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "erased" in (old_token.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as refreshed:
            await stack.gateway().Refresh(auth_pb2.RefreshRequest(refresh_token=alice.refresh_token), timeout=TIMEOUT_S)
        assert refreshed.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert await name_refused(stack, alice_name) == grpc.StatusCode.ALREADY_EXISTS
        again = await operator.EraseUserData(storage_pb2.EraseUserDataRequest(user_id=alice.user_id), timeout=TIMEOUT_S)
        assert again.events_deleted_from_log == 0  # idempotent: nothing of hers is left to delete
    finally:
        await stop_stack(stack, running)

    # Every service rebuilt from the streams with their holes, on the same broker and archive.
    stack, running = await start_stack(nats_server, pki, tmp_path, registration="open")
    try:
        bob = await stack.login(bob_name)
        # Versions come from the envelopes, not from counting the events that are left.
        js = (await nats_server.connect("platform")).jetstream()
        assert (await js.stream_info("PARKED")).state.messages == 0  # the parked copy went too
        for channel_id in (cid, quiet_id):
            newest = await js.get_last_msg("MSG", channel_subject(channel_id))
            rebuilt = stack.app("messaging").channels.get(channel_id)
            assert rebuilt.version == decode(newest.data or b"").aggregate_version
        assert await send(stack, bob, quiet_id, unique("bobrestart-")) == 3  # not #2 again
        assert await send(stack, bob, cid, unique("bobrestart-")) == 6
        assert sorted(stack.app("messaging").channels.get(cid).messages) == [2, 5, 6]
        assert await name_refused(stack, alice_name) == grpc.StatusCode.ALREADY_EXISTS
        with pytest.raises(grpc.aio.AioRpcError) as no_login:
            await stack.login(alice_name)
        assert no_login.value.code() == grpc.StatusCode.UNAUTHENTICATED

        async def six_in_history() -> list[messaging_pb2.ChatMessage] | None:
            found = await history(stack, bob, cid)
            return found if len(found) == 6 else None

        shown = await eventually(six_in_history, "bob's new message in history", TIMEOUT_S)
        assert [m.channel_seq for m in shown] == [1, 2, 3, 4, 5, 6]
        assert [m.erased for m in shown] == [True, False, True, True, False, False]
        assert (shown[1].body, shown[1].sender_name) == (bob_body, bob_name)
    finally:
        await stop_stack(stack, running)


async def test_an_erasure_cut_short_after_the_shred_is_finished_by_the_next_start(
    nats_server: NatsTestServer, pki: Pki, tmp_path: Path
) -> None:
    alice_name, alice_body = unique("alice"), unique("alicesecret-")
    stack, running = await start_stack(nats_server, pki, tmp_path, registration="open")
    try:
        alice = await register(stack, alice_name)
        channel = await stack.gateway().CreateChannel(
            messaging_pb2.CreateChannelRequest(name="cut-short"), metadata=bearer(alice.access_token), timeout=TIMEOUT_S
        )
        await send(stack, alice, channel.channel_id, alice_body)

        async def archived() -> bool | None:
            return True if len(await history(stack, alice, channel.channel_id)) == 1 else None

        await eventually(archived, "alice's message in the archive", TIMEOUT_S)
        await request_erasure(stack, alice.user_id)
        # What EraseUserData has done when storage dies right after the shred: the audited
        # decision is on STORE and the keys are gone, but nothing is deleted from the streams yet.
        storage, ctx = stack.app("storage"), stack.apps["storage"].ctx
        assert ctx is not None
        decision = UserDataErased(
            user_id=alice.user_id,
            erased_by="platform",
            destroyed_key_ids=await storage.archive.live_user_keys(alice.user_id),
        )
        await ctx.bus.append(
            privacy_subject(alice.user_id),
            NewEvent(aggregate_type="privacy", aggregate_id=alice.user_id, payload=decision, actor="platform"),
            aggregate_version=1,
            expected_last_subject_seq=0,
        )
        await storage.archive.shred_user(alice.user_id)
    finally:
        await stop_stack(stack, running)
    files = stream_files(tmp_path / "nats", "AUTH", "MSG")
    assert holding(files, alice_body)
    assert holding(files, alice_name)

    stack, running = await start_stack(nats_server, pki, tmp_path, registration="open")
    try:

        async def finished() -> bool | None:
            left = stream_files(tmp_path / "nats", "AUTH", "MSG")
            return None if holding(left, alice_body) or holding(left, alice_name) else True

        await eventually(finished, "the restarted storage to delete alice's events from the streams", TIMEOUT_S)
        js = (await nats_server.connect("platform")).jetstream()

        async def recorded() -> bool | None:
            # Storage records the finished deletion after the last event left the streams.
            record = await js.get_last_msg("STORE", privacy_subject(alice.user_id))
            return (
                True
                if decode(record.data or b"").event_type == UserDataErasedFromStreams.DESCRIPTOR.full_name
                else None
            )

        await eventually(recorded, "storage to record that alice's events left the streams", TIMEOUT_S)
        assert await name_refused(stack, alice_name) == grpc.StatusCode.ALREADY_EXISTS
    finally:
        await stop_stack(stack, running)
