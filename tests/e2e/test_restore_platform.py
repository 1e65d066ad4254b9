"""Disaster recovery end to end: a backup restored into an empty data folder runs as the platform
it was taken from. `parley up` re-seeds the event log from the restored archive first; then the
same people log in (MFA included), the erased stay erased, history and numbering go on, the
audit chain verifies, and the patch registry serves the same releases."""

from __future__ import annotations

import base64
import shutil
import time
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP
from parley.storage.v1 import storage_pb2, storage_pb2_grpc
from parley.storage.v1.events_pb2 import EventLogRestored

from parley_client import MfaRequired, ParleyClient, ParleyError
from parley_core.envelope import decode, open_payload
from parley_core.net import free_port
from parley_testing.platform import RunningPlatform, platform_in
from parley_testing.stack import PASSWORD
from parley_testing.waiting import eventually

pytestmark = pytest.mark.e2e

ARCHIVE_SECRETS = ("storage-kek.json", "storage-backup.key", "storage-backup-signing.pub")
Shown = tuple[int, str, str, bool, bool, bool, tuple[tuple[str, tuple[str, ...]], ...]]


def authenticator(secret_base32: str) -> TOTP:
    return TOTP(base64.b32decode(secret_base32 + "=" * (-len(secret_base32) % 8)), 6, SHA1(), 30)


async def shown(client: ParleyClient, channel_id: str) -> list[Shown]:
    page = await client.history(channel_id, limit=500)
    return [
        (
            m.channel_seq,
            m.sender_name,
            m.body,
            m.redacted,
            m.erased,
            m.edited,
            tuple((r.emoji, tuple(r.user_ids)) for r in m.reactions),
        )
        for m in page.messages
    ]


async def archived_stream(platform: RunningPlatform, stream: str) -> list[storage_pb2.ArchivedEvent]:
    """The operator's view of one archived stream (platform identity, mutual TLS, straight to storage)."""
    channel = platform.service_channel("storage")
    try:
        page = await storage_pb2_grpc.StorageArchiveServiceStub(channel).ReadArchivedStream(
            storage_pb2.ReadArchivedStreamRequest(stream=stream, limit=1000), timeout=30
        )
        return list(page.events)
    finally:
        await channel.close()


async def test_a_restored_backup_runs_as_the_platform_it_was(tmp_path: Path) -> None:
    (tmp_path / "original").mkdir()
    original = platform_in(tmp_path / "original")
    original.start()
    try:
        original.cli("admin", "create-user", "olga", "--role", "operator", stdin=PASSWORD + "\n")
        original.cli("login", "olga", stdin=PASSWORD + "\n")
        alice, bob, carol, dave = [await original.new_user(name) for name in ("alice", "bob", "carol", "dave")]
        app = authenticator((await alice.begin_totp_enrolment()).secret_base32)
        enrolled_at = time.time()
        await alice.confirm_totp_enrolment(app.generate(int(enrolled_at)).decode())

        channel = (await alice.create_channel("general")).channel_id
        for member in (bob, carol, dave):
            await member.join_channel(channel)
        await alice.send(channel, "hello from alice")  # 1
        await bob.send(channel, "hello from bob")  # 2
        await carol.send(channel, "carol was here")  # 3, erased below
        await dave.send(channel, "dave was here")  # 4, erased after the backup
        await alice.send(channel, "a typo I will take back")  # 5, the newest, redacted
        await alice.edit(channel, 1, "hello from alice, edited")
        await bob.react(channel, 1, "👍")
        await alice.redact(channel, 5)
        await carol.erase_my_data(reason="leaving")

        wheel = tmp_path / "parley_messaging-0.9.0-py3-none-any.whl"
        wheel.write_bytes(b"a release the registry keeps")
        original.cli("--as", "olga", "patch", "key", "create", "messaging")
        original.cli("--as", "olga", "patch", "publish", "messaging", "0.9.0", "--wheel", str(wheel))

        seen: list[list[Shown]] = []
        try:
            before = await eventually(lambda: _settled(bob, channel, seen), what="history settled", timeout=90)
        except TimeoutError:
            raise AssertionError(f"history never showed the erasure and the redaction: {seen[-1:]}") from None
        backup = tmp_path / "backup"
        created = original.cli("backup", "create", str(backup)).stdout
        assert f"created in {backup}: " in created
        assert f"check it with `parley backup verify {backup}`" in created
        await bob.send(channel, "after the backup")  # not in the restored platform
        await dave.erase_my_data(reason="after the backup")  # the newest keyring has shredded his keys
        dave_id = dave.user_id
        for client in (alice, bob, carol, dave):
            await client.close()
    finally:
        original.kill()

    fresh = tmp_path / "restored" / "data"
    (fresh / "secrets").mkdir(parents=True)
    for name in ARCHIVE_SECRETS:  # from the operator's key backup, as docs/storage.md says
        shutil.copy2(original.data_dir / "secrets" / name, fresh / "secrets" / name)
    restored = RunningPlatform(data_dir=fresh, env=original.env, up_args=("--gateway-port", str(free_port())))
    refused = restored.cli("backup", "restore", str(backup), check=False)
    assert refused.returncode == 1
    # The accounts' password hashes and alice's TOTP secret are sealed with auth's key.
    assert "auth-mfa-key.bin" in refused.stderr
    assert "password hashes and MFA enrolments' TOTP secrets" in refused.stderr
    assert not (fresh / "storage" / "archive.db").exists()
    shutil.copy2(original.data_dir / "secrets" / "auth-mfa-key.bin", fresh / "secrets")
    done = restored.cli("backup", "restore", str(backup))
    assert "up`" in done.stderr  # says how to start it
    assert f"restored from {backup}: " in done.stdout
    assert ", the patch registry (" in done.stdout

    restored.start()
    try:
        output = restored.output()
        assert "putting the archive's events back into the event log" in output
        assert "MSG: " in output
        assert "first account" not in output  # it has its accounts

        bob = restored.client()
        await bob.login("bob", PASSWORD)
        daves = (4, "", "", False, True, False, ())  # erased since the backup: the keyring shredded it
        assert await shown(bob, channel) == [daves if row[0] == 4 else row for row in before]
        assert (await bob.send(channel, "after the restore")).channel_seq == 6  # numbering goes on

        alice = restored.client()
        with pytest.raises(MfaRequired):
            await alice.login("alice", PASSWORD)
        step = max(time.time(), enrolled_at + 30)  # a code after the one spent on enrolment
        await alice.login("alice", PASSWORD, totp_code=app.generate(int(step)).decode())
        assert [c.channel_id for c in await alice.my_channels()] == [channel]

        carol = restored.client()
        for erased in ("carol", "dave"):  # erased before the backup, and after it: both stay erased
            with pytest.raises(ParleyError) as no_login:
                await carol.login(erased, PASSWORD)
            assert no_login.value.code == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(ParleyError) as taken:
                await carol.register(erased, PASSWORD)
            assert taken.value.code == grpc.StatusCode.ALREADY_EXISTS

        verified = restored.cli("audit", "verify", check=False)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "audit chain intact" in verified.stdout

        restored.cli("login", "olga", stdin=PASSWORD + "\n")
        assert "0.9.0" in restored.cli("patch", "list").stdout
        (fresh / "cli" / "keys").mkdir(parents=True, exist_ok=True)  # the publisher keeps their key
        shutil.copy2(original.data_dir / "cli" / "keys" / "messaging.pem", fresh / "cli" / "keys")
        again = restored.cli(
            "--as", "olga", "patch", "publish", "messaging", "0.9.0", "--wheel", str(wheel), check=False
        )
        assert "already published" in again.stderr
        newer = wheel.with_name("parley_messaging-0.9.1-py3-none-any.whl")
        newer.write_bytes(b"the next release")
        published = restored.cli("--as", "olga", "patch", "publish", "messaging", "0.9.1", "--wheel", str(newer))
        assert "published messaging 0.9.1" in published.stdout

        msg = await archived_stream(restored, "MSG")
        assert len({e.stream_seq for e in msg}) == len(msg)  # nothing archived twice
        store = await archived_stream(restored, "STORE")
        records = [open_payload(decode(e.envelope)) for e in store if e.event_type.endswith("EventLogRestored")]
        assert len(records) == 1
        assert isinstance(records[0], EventLogRestored)
        assert {s.stream for s in records[0].streams} == {"AUTH", "MSG", "SEC", "PATCH", "STORE"}
        assert list(records[0].erasures_finished) == [dave_id]  # his erasure finished in the log
        for client in (alice, bob, carol):
            await client.close()
    finally:
        restored.kill()


async def _settled(bob: ParleyClient, channel: str, seen: list[list[Shown]]) -> list[Shown] | None:
    rows = await shown(bob, channel)
    seen[:] = [rows]
    flags = [(seq, redacted, erased) for seq, _, _, redacted, erased, _, _ in rows]
    settled = [(1, False, False), (2, False, False), (3, False, True), (4, False, False), (5, True, False)]
    return rows if flags == settled else None
