"""The storage service in the platform as `make run` starts it: encryption at rest, erasure, audit,
lag, rebuild reads and exactly-once archiving across a kill -9."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from parley.auth.v1 import auth_pb2, auth_pb2_grpc
from parley.common.v1.envelope_pb2 import EventEnvelope
from parley.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from parley.messaging.v1.events_pb2 import MessagePosted
from parley.storage.v1 import storage_pb2, storage_pb2_grpc
from parley.storage.v1.events_pb2 import UserDataErased

from parley_client import ParleyClient, ParleyError
from parley_storage.archive import SqlEventArchive, StoredMessage, open_engine
from parley_storage.datakeys import DataKeys
from parley_storage.kek import FileKeyring
from parley_testing.platform import RunningPlatform, platform_in
from parley_testing.shared_postgres import schema_url, shared_schema
from parley_testing.stack import PASSWORD
from parley_testing.waiting import eventually

pytestmark = pytest.mark.e2e

TIMEOUT_S = 90.0
RESTARTING = (grpc.aio.AioRpcError, ParleyError)  # what a call meets while storage restarts: not yet


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


async def all_history(client: ParleyClient, channel_id: str) -> list[tuple[int, str, str]]:
    out: list[tuple[int, str, str]] = []
    after = 0
    while True:
        page = await client.history(channel_id, after_seq=after, limit=500)
        out.extend((m.channel_seq, m.sender_name, m.body) for m in page.messages)
        if not page.has_more:
            return out
        after = page.messages[-1].channel_seq


async def until_archived(client: ParleyClient, channel_id: str, count: int) -> None:
    """Until the channel's history holds `count` messages: the archive trails the bus."""

    async def archived() -> bool | None:
        return True if len(await all_history(client, channel_id)) == count else None

    await eventually(archived, f"{count} messages in history", TIMEOUT_S, passing=RESTARTING)


@pytest.fixture
async def operator(platform: RunningPlatform) -> AsyncIterator[storage_pb2_grpc.StorageArchiveServiceStub]:
    """The operator's tooling: the platform identity over mutual TLS, straight to storage."""
    channel = platform.service_channel("storage")
    yield storage_pb2_grpc.StorageArchiveServiceStub(channel)
    await channel.close()


async def request_erasure(platform: RunningPlatform, user_id: str, reason: str) -> None:
    """The operator's erasure request, recorded by auth first (as `parley erase` does)."""
    request = auth_pb2.AccountActionRequest(user_id=user_id, reason=reason)
    async with platform.service_channel("auth") as channel:
        await auth_pb2_grpc.AuthServiceStub(channel).RequestErasure(request, timeout=30)


async def record_retention(platform: RunningPlatform, channel_id: str, days: int) -> None:
    """The operator's retention policy, recorded by messaging first (as `parley retention` does)."""
    request = messaging_pb2.SetChannelRetentionRequest(channel_id=channel_id, days=days)
    async with platform.service_channel("messaging") as channel:
        await messaging_pb2_grpc.MessagingServiceStub(channel).SetChannelRetention(request, timeout=30)


async def auditor_token(platform: RunningPlatform, role: str = "security-auditor") -> list[tuple[str, str]]:
    """A real login of an account the operator created with `role`: services take the role from
    their access projection (rbac), so a token that merely claims it would not do."""
    name = unique(f"{role.replace('-', '')}-")
    await asyncio.to_thread(platform.cli, "admin", "create-user", name, "--role", role, stdin=PASSWORD + "\n")
    client = platform.client()
    try:
        await client.login(name, PASSWORD)
        assert client.access_token is not None
        return [("authorization", f"Bearer {client.access_token}")]
    finally:
        await client.close()


async def read_stream(stub: storage_pb2_grpc.StorageArchiveServiceStub, stream: str) -> list[storage_pb2.ArchivedEvent]:
    out: list[storage_pb2.ArchivedEvent] = []
    after = 0
    while True:
        page = await stub.ReadArchivedStream(
            storage_pb2.ReadArchivedStreamRequest(stream=stream, after_seq=after), timeout=30
        )
        out.extend(page.events)
        if not page.has_more:
            return out
        after = page.events[-1].stream_seq


PAUSE_FOLDER = "pause-in-batch"  # beside the data folder: the fault point's files (faults.py)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlatform]:
    """parley_core's test platform, with storage's test-only fault point enabled (see faults.py)."""
    root = tmp_path_factory.mktemp("platform")
    running = platform_in(root, PARLEY_STORAGE_PAUSE_IN_BATCH=str(root / PAUSE_FOLDER))
    yield from running.served()


@pytest.fixture(scope="module")
def postgres_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlatform]:
    """The platform with storage on PostgreSQL (its own schema, dropped afterwards), by URL alone."""
    with shared_schema("parley_e2e") as (_, schema):
        url = schema_url(schema, driver="postgresql+psycopg")
        root = tmp_path_factory.mktemp("pg-platform")
        running = RunningPlatform(
            data_dir=root / "data",
            env={"PARLEY_DATABASE_URL": url, "PARLEY_STORAGE_PAUSE_IN_BATCH": str(root / PAUSE_FOLDER)},
        )
        yield from running.served()


def files_under(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.rglob("*") if p.is_file()]


async def test_no_plaintext_body_or_user_name_at_rest(platform: RunningPlatform) -> None:
    alice_name, bob_name = unique("alicezq"), unique("bobxk")
    alice, bob = await platform.new_user(alice_name), await platform.new_user(bob_name)
    channel = await alice.create_channel("at-rest")
    await bob.join_channel(channel.channel_id)
    bodies = [unique("secretbody-") for _ in range(5)]
    for i, body in enumerate(bodies):
        await (alice if i % 2 == 0 else bob).send(channel.channel_id, body)

    await until_archived(bob, channel.channel_id, len(bodies))
    history = await all_history(bob, channel.channel_id)
    assert [b for _, _, b in history] == bodies  # readable through the service...
    assert {n for _, n, _ in history} == {alice_name, bob_name}

    storage_files = files_under(platform.data_dir / "storage")
    jetstream_files = files_under(platform.data_dir / "nats" / "jetstream")
    assert any(p.name == "archive.db" for p in storage_files)
    assert any(p.suffix == ".blk" for p in jetstream_files)  # the stream blocks are there
    needles = [b.encode() for b in (*bodies, alice_name, bob_name)]
    for path in storage_files + jetstream_files:
        raw = path.read_bytes()
        for needle in needles:
            assert needle not in raw, f"{needle!r} in plaintext in {path}"  # ...but not on disk
    for secret in ("storage-kek.json", "jetstream-store.key"):
        assert (platform.data_dir / "secrets" / secret).stat().st_mode & 0o777 == 0o600
    for client in (alice, bob):
        await client.close()


async def test_erasure_shreds_one_user_and_is_audited(
    platform: RunningPlatform, operator: storage_pb2_grpc.StorageArchiveServiceStub
) -> None:
    alice_name, bob_name = unique("alice"), unique("bob")
    alice, bob = await platform.new_user(alice_name), await platform.new_user(bob_name)
    channel = await alice.create_channel("erasure")
    await bob.join_channel(channel.channel_id)
    await alice.send(channel.channel_id, "alice writes first")
    await bob.send(channel.channel_id, "bob answers")
    await alice.send(channel.channel_id, "alice again")

    await until_archived(bob, channel.channel_id, 3)
    exported = await operator.ExportUserData(storage_pb2.ExportUserDataRequest(user_id=alice.user_id), timeout=30)
    assert "alice writes first" in exported.archive.decode()
    assert "bob answers" not in exported.archive.decode()

    # Bob may not erase alice; alice may not see the audit; the operator erases on alice's request.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await operator.EraseUserData(
            storage_pb2.EraseUserDataRequest(user_id=alice.user_id),
            metadata=[("authorization", f"Bearer {bob.access_token}")],
            timeout=30,
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await request_erasure(platform, alice.user_id, "GDPR art. 17 request #42")
    erased = await operator.EraseUserData(
        storage_pb2.EraseUserDataRequest(user_id=alice.user_id, reason="GDPR art. 17 request #42"), timeout=30
    )
    assert len(erased.destroyed_key_ids) == 1
    assert erased.events_unreadable >= 3  # her registration and her two messages

    history = await all_history(bob, channel.channel_id)
    assert history == [(1, "", ""), (2, bob_name, "bob answers"), (3, "", "")]
    # Erased, not redacted and not merely empty: the client can say why the text is gone.
    page = await bob.history(channel.channel_id, after_seq=0, limit=10)
    assert [(m.erased, m.redacted) for m in page.messages] == [(True, False), (False, False), (True, False)]

    auditor = await auditor_token(platform)

    async def audited() -> list[storage_pb2.ArchivedEvent]:
        page = await operator.QueryAudit(
            storage_pb2.QueryAuditRequest(target=alice.user_id), metadata=auditor, timeout=30
        )
        return [e for e in page.events if e.event_type == UserDataErased.DESCRIPTOR.full_name]

    async def erasure_archived() -> bool | None:
        return True if len(await audited()) == 1 else None

    await eventually(erasure_archived, "the UserDataErased event in the archive", TIMEOUT_S, passing=RESTARTING)
    (event,) = await audited()
    envelope = EventEnvelope.FromString(event.envelope)
    record = UserDataErased.FromString(envelope.payload)
    assert (record.user_id, record.erased_by, record.reason) == (alice.user_id, "platform", "GDPR art. 17 request #42")
    assert list(record.destroyed_key_ids) == list(erased.destroyed_key_ids)

    with pytest.raises(grpc.aio.AioRpcError) as not_auditor:
        await operator.QueryAudit(
            storage_pb2.QueryAuditRequest(target=alice.user_id),
            metadata=await auditor_token(platform, "member"),
            timeout=30,
        )
    assert not_auditor.value.code() == grpc.StatusCode.PERMISSION_DENIED
    for client in (alice, bob):
        await client.close()


def message_seqs(events: Sequence[storage_pb2.ArchivedEvent], channel_id: str) -> list[int]:
    seqs = []
    for event in events:
        if event.event_type == MessagePosted.DESCRIPTOR.full_name and event.aggregate_id == channel_id:
            seqs.append(MessagePosted.FromString(EventEnvelope.FromString(event.envelope).payload).channel_seq)
    return seqs


async def test_exactly_once_across_kill_9_of_storage_mid_archive(
    platform: RunningPlatform, operator: storage_pb2_grpc.StorageArchiveServiceStub
) -> None:
    await check_exactly_once_across_kill_9(platform, operator)


@pytest.mark.slow  # `make test-all`, to keep make test within 15 min; the SQLite kill -9 test stays
async def test_exactly_once_across_kill_9_on_postgresql(postgres_platform: RunningPlatform) -> None:
    channel, stub = peer_stub(postgres_platform, "platform")
    try:
        await check_exactly_once_across_kill_9(postgres_platform, stub)
    finally:
        await channel.close()


async def check_exactly_once_across_kill_9(
    platform: RunningPlatform, operator: storage_pb2_grpc.StorageArchiveServiceStub
) -> None:
    sender = await platform.new_user(unique("sender"))
    channel = await sender.create_channel("kill-9")
    total = 300
    bodies = [f"kill9-{n:04d}" for n in range(total)]
    storage_pid = int(platform.service("storage")["pid"])  # type: ignore[arg-type]

    async def send_all() -> None:
        gate = asyncio.Semaphore(8)

        async def one(body: str) -> None:
            async with gate:
                await sender.send(channel.channel_id, body, idempotency_key=body)

        await asyncio.gather(*(one(b) for b in bodies))

    sending = asyncio.create_task(send_all())

    async def archiving_started() -> bool | None:
        lag = await operator.GetArchiveLag(storage_pb2.GetArchiveLagRequest(), timeout=10)
        msg = next(s for s in lag.streams if s.stream == "MSG")
        return True if msg.archived_seq > 20 else None

    await eventually(archiving_started, "storage to archive the first messages", TIMEOUT_S, passing=RESTARTING)
    # Arm the fault point: the next MSG batch stops with its first event written, uncommitted.
    pause = platform.data_dir.parent / PAUSE_FOLDER
    pause.mkdir(exist_ok=True)
    (pause / "arm").write_text("MSG")

    async def paused_in_batch() -> bool | None:
        return True if (pause / "paused").exists() else None

    await eventually(paused_in_batch, "storage to pause inside a MSG batch transaction", TIMEOUT_S)
    inside = json.loads((pause / "paused").read_text())
    assert inside["pid"] == storage_pid
    lag = await operator.GetArchiveLag(storage_pb2.GetArchiveLagRequest(), timeout=10)
    committed = next(s for s in lag.streams if s.stream == "MSG").committed_seq
    assert committed < inside["stream_seq"]  # the event is written in an open, uncommitted transaction
    os.kill(storage_pid, signal.SIGKILL)  # inside that transaction, while sends go on
    await sending  # every send was acknowledged: messaging does not need storage

    async def restarted() -> bool | None:
        return True if "storage is serving again" in platform.output() else None

    await eventually(restarted, "`parley up` to restart the killed storage service", TIMEOUT_S)
    assert "storage crashed (exit -9)" in platform.output()
    restarted_operator = storage_pb2_grpc.StorageArchiveServiceStub(platform.service_channel("storage"))

    async def caught_up() -> bool | None:
        lag = await restarted_operator.GetArchiveLag(storage_pb2.GetArchiveLagRequest(), timeout=10)
        return True if all(s.events_behind == 0 for s in lag.streams) else None

    await eventually(caught_up, "the archive to catch up after the restart", TIMEOUT_S, passing=RESTARTING)
    lag = await restarted_operator.GetArchiveLag(storage_pb2.GetArchiveLagRequest(), timeout=10)
    msg_lag = next(s for s in lag.streams if s.stream == "MSG")
    assert msg_lag.seconds_behind == 0

    archived = await read_stream(restarted_operator, "MSG")
    stream_seqs = [e.stream_seq for e in archived]
    assert stream_seqs == list(range(1, msg_lag.stream_last_seq + 1))  # every event once, none missing
    assert sorted(message_seqs(archived, channel.channel_id)) == list(range(1, total + 1))
    history = await all_history(sender, channel.channel_id)
    assert [seq for seq, _, _ in history] == list(range(1, total + 1))
    assert sorted(body for _, _, body in history) == bodies
    await sender.close()


async def test_backup_while_sending_restores_every_acknowledged_message(
    platform: RunningPlatform, tmp_path: Path
) -> None:
    await check_backup_while_sending(platform, tmp_path)


async def test_backup_while_sending_on_postgresql(postgres_platform: RunningPlatform, tmp_path: Path) -> None:
    await check_backup_while_sending(postgres_platform, tmp_path)


async def restored_history(
    platform: RunningPlatform, backup: Path, fresh: Path, channel_id: str
) -> list[StoredMessage]:
    """Disaster recovery: `parley backup restore` into an empty data folder, plus the keys from the
    operator's key backup (taken now); then the channel's history as the restored archive has it."""
    (fresh / "secrets").mkdir(parents=True)
    # As docs/storage.md names them; auth's key too, since the archive holds accounts (their sealed password hashes).
    for name in ("storage-kek.json", "storage-backup.key", "storage-backup-signing.pub", "auth-mfa-key.bin"):
        shutil.copy2(platform.data_dir / "secrets" / name, fresh / "secrets" / name)
    restored = subprocess.run(
        [sys.executable, "-m", "parley_cli", "--data-dir", str(fresh), "backup", "restore", str(backup)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert restored.returncode == 0, restored.stderr
    # Its event log is re-seeded by `parley up`: restore says so and marks the folder for it.
    assert f"parley --data-dir {fresh} up" in restored.stderr
    assert (fresh / "storage" / "restored-from-backup.json").exists()
    engine = open_engine(f"sqlite:///{fresh / 'storage' / 'archive.db'}")
    archive = SqlEventArchive(engine, DataKeys(FileKeyring.load_or_create(fresh / "secrets" / "storage-kek.json")))
    try:
        messages, has_more = await archive.channel_history(channel_id, after_seq=0, limit=100_000)
    finally:
        engine.dispose()
    assert not has_more
    return messages


async def test_an_erasure_reaches_a_backup_taken_before_it(
    platform: RunningPlatform, operator: storage_pb2_grpc.StorageArchiveServiceStub, tmp_path: Path
) -> None:
    alice, bob = await platform.new_user(unique("alice")), await platform.new_user(unique("bob"))
    channel = await alice.create_channel("erase-backup")
    await bob.join_channel(channel.channel_id)
    await alice.send(channel.channel_id, "alice before the backup")
    await bob.send(channel.channel_id, "bob before the backup")

    await until_archived(bob, channel.channel_id, 2)
    backup = tmp_path / "before-erasure"
    await asyncio.to_thread(platform.cli, "backup", "create", str(backup))
    await request_erasure(platform, alice.user_id, "test")
    await operator.EraseUserData(storage_pb2.EraseUserDataRequest(user_id=alice.user_id), timeout=30)

    messages = await restored_history(platform, backup, tmp_path / "fresh", channel.channel_id)
    assert [(m.body, m.erased) for m in messages] == [("", True), ("bob before the backup", False)]
    for client in (alice, bob):
        await client.close()


async def check_backup_while_sending(platform: RunningPlatform, tmp_path: Path) -> None:
    sender = await platform.new_user(unique("backup"))
    channel = await sender.create_channel("backup")
    acknowledged: list[str] = []
    stop = asyncio.Event()

    async def keep_sending() -> None:
        n = 0
        while not stop.is_set():
            body = f"backup-{n:05d}"
            await sender.send(channel.channel_id, body, idempotency_key=body)
            acknowledged.append(body)
            n += 1

    sending = asyncio.create_task(keep_sending())

    async def some_sent() -> bool | None:
        return True if len(acknowledged) >= 30 else None

    await eventually(some_sent, "the first acknowledged sends", TIMEOUT_S)
    before_point = list(acknowledged)  # acknowledged before the backup began
    backup = tmp_path / "backup"
    created = await asyncio.to_thread(platform.cli, "backup", "create", str(backup), "--json")
    after_backup = len(acknowledged)
    stop.set()
    await sending
    assert after_backup > len(before_point)  # sends went on while the backup ran

    manifest = json.loads(created.stdout)
    assert manifest["stream_point"]["MSG"]["last_seq"] >= len(before_point)
    verified = platform.cli("backup", "verify", str(backup))
    assert verified.returncode == 0
    events = sum(manifest["event_counts"].values())
    assert f"backup {manifest['backup_id']} of {manifest['created_at']} in {backup} verified" in verified.stdout
    assert f"every file matches, {events} events (AUTH " in verified.stdout  # one line, not the manifest
    for run in (created, verified):  # asyncio's harmless TLS half-close warning stays off stderr
        assert "eof_received" not in run.stderr, run.stderr

    messages = await restored_history(platform, backup, tmp_path / "fresh", channel.channel_id)
    restored_bodies = [m.body for m in messages]
    assert set(before_point) <= set(restored_bodies)  # every message acknowledged before the point
    assert restored_bodies == acknowledged[: len(restored_bodies)]  # in order, no gaps, no duplicates
    live = await all_history(sender, channel.channel_id)
    assert [(s, b) for s, _, b in live][: len(messages)] == [(m.channel_seq, m.body) for m in messages]
    await sender.close()


def peer_stub(
    platform: RunningPlatform, identity: str
) -> tuple[grpc.aio.Channel, storage_pb2_grpc.StorageArchiveServiceStub]:
    channel = platform.service_channel("storage", identity)
    return channel, storage_pb2_grpc.StorageArchiveServiceStub(channel)


async def test_services_rebuild_from_the_archive_within_their_streams_and_rotation_keeps_history(
    platform: RunningPlatform, operator: storage_pb2_grpc.StorageArchiveServiceStub
) -> None:
    owner = await platform.new_user(unique("owner"))
    channel = await owner.create_channel("rebuild")
    for n in range(3):
        await owner.send(channel.channel_id, f"rebuild {n}")

    await until_archived(owner, channel.channel_id, 3)
    messaging_channel, messaging = peer_stub(platform, "messaging")
    gateway_channel, gateway = peer_stub(platform, "gateway")
    try:
        page = await messaging.GetAggregateEvents(
            storage_pb2.GetAggregateEventsRequest(aggregate_type="channel", aggregate_id=channel.channel_id), timeout=30
        )
        assert [e.aggregate_version for e in page.events] == [1, 2, 3, 4]  # created + three posts
        envelopes = [EventEnvelope.FromString(e.envelope) for e in page.events]
        bodies = [MessagePosted.FromString(env.payload).body for env in envelopes[1:]]
        assert bodies == ["rebuild 0", "rebuild 1", "rebuild 2"]
        later = await messaging.GetAggregateEvents(
            storage_pb2.GetAggregateEventsRequest(
                aggregate_type="channel", aggregate_id=channel.channel_id, after_version=2, limit=1
            ),
            timeout=30,
        )
        assert ([e.aggregate_version for e in later.events], later.has_more) == ([3], True)
        assert len(await read_stream(messaging, "MSG")) >= 4

        for stub, request in (
            (messaging, storage_pb2.ReadArchivedStreamRequest(stream="SEC")),  # not a reader of SEC
            (gateway, storage_pb2.ReadArchivedStreamRequest(stream="MSG")),  # forwards users only
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ReadArchivedStream(request, timeout=30)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await messaging.ReadArchivedStream(storage_pb2.ReadArchivedStreamRequest(stream="NOPE"), timeout=30)
        assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as not_operator:
            await messaging.SetRetentionPolicy(
                storage_pb2.SetRetentionPolicyRequest(channel_id=channel.channel_id, days=1), timeout=30
            )
        assert not_operator.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await messaging_channel.close()
        await gateway_channel.close()

    await record_retention(platform, channel.channel_id, 30)
    retention = await operator.SetRetentionPolicy(
        storage_pb2.SetRetentionPolicyRequest(channel_id=channel.channel_id, days=30), timeout=30
    )
    assert retention.removed_now == 0  # nothing is 30 days old yet
    keyring_before = (platform.data_dir / "secrets" / "storage-kek.json").read_text()
    rotated = await operator.RotateKeyEncryptionKey(storage_pb2.RotateKeyEncryptionKeyRequest(), timeout=60)
    assert rotated.rewrapped_data_keys >= 2  # at least the owner's and the channel's keys
    assert rotated.rotated_by  # the answer is the rotation's audit record, which names who rotated
    assert rotated.retired_kek_ids
    for retired in rotated.retired_kek_ids:
        assert retired in keyring_before
        assert retired not in (platform.data_dir / "secrets" / "storage-kek.json").read_text()
    assert [b for _, _, b in await all_history(owner, channel.channel_id)] == [f"rebuild {n}" for n in range(3)]
    lag = await operator.GetArchiveLag(storage_pb2.GetArchiveLagRequest(), timeout=30)
    assert {s.stream for s in lag.streams} == {"AUTH", "MSG", "SEC", "PATCH", "STORE"}
    await owner.close()
