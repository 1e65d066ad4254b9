"""End-to-end encrypted channels through the running platform: the server never holds plaintext,
and a member who left cannot read what is sent after they left.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from parley.storage.v1.storage_pb2 import GetChannelHistoryResponse as HistoryPage

from parley_client import ParleyClient, ParleyError, UndecryptableMessage
from parley_testing.platform import RunningPlatform
from parley_testing.stack import PASSWORD
from parley_testing.waiting import eventually

pytestmark = pytest.mark.e2e

TIMEOUT_S = 30.0


async def new_user(platform: RunningPlatform, prefix: str) -> ParleyClient:
    return await platform.new_user(f"{prefix}{uuid.uuid4().hex[:8]}")


def files_containing(root: Path, needles: list[bytes]) -> dict[str, list[str]]:
    """Every file under `root` holding one of `needles` (SQLite files and WAL, JetStream store, logs)."""
    found: dict[str, list[str]] = {}
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits = [n.decode() for n in needles if n in data]
            if hits:
                found[str(path.relative_to(root))] = hits
    return found


async def test_encrypted_conversation_leaves_no_plaintext_and_leaver_cannot_decrypt(
    platform: RunningPlatform,
) -> None:
    alice, bob, carol = [await new_user(platform, n) for n in ("alice", "bob", "carol")]
    for client, device in ((alice, "alice-laptop"), (bob, "bob-phone"), (carol, "carol-desktop")):
        await client.enable_e2ee(device)
    channel = await alice.create_channel("secret-room", encrypted=True)
    assert channel.encrypted
    for member in (bob, carol):
        await member.join_channel(channel.channel_id)

    # The server refuses plaintext in an encrypted channel, so a client bug cannot leak it.
    bare = platform.client()
    bare.use_token(bob.access_token or "", bob.user_id or "")
    with pytest.raises(ParleyError) as refused:
        await bare.send(channel.channel_id, "plain text here")
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    await bare.close()

    marker = uuid.uuid4().hex
    before = [f"before-{marker}-{n}: the merger closes friday" for n in range(3)]
    stream = bob.subscribe([channel.channel_id])
    await asyncio.wait_for(stream.ready(), TIMEOUT_S)
    sent = [await alice.send(channel.channel_id, text) for text in before[:2]]
    sent.append(await bob.send(channel.channel_id, before[2]))
    assert all(m.body.startswith("megolm.v1:") and marker not in m.body for m in sent)

    live = []
    async for message in stream:
        live.append(message)
        if len(live) == 3:
            break
    assert [m.body for m in live] == before  # the SDK decrypts the live stream on bob's device
    assert [await bob.read(m) for m in live] == before
    assert [await carol.read(m) for m in sent] == before
    assert [await alice.read(m) for m in sent] == before

    await carol.leave_channel(channel.channel_id)
    after = [f"after-{marker}-{n}: carol must not read this" for n in range(2)]
    later = [await alice.send(channel.channel_id, after[0]), await bob.send(channel.channel_id, after[1])]
    assert [await bob.read(m) for m in later[:1]] == after[:1]
    assert [await alice.read(m) for m in later[1:]] == after[1:]
    # Even holding the ciphertext (it left, so the server no longer gives it to her), carol's
    # device has no key for the new sessions: both senders started one when she left.
    for message in later:
        with pytest.raises(UndecryptableMessage):
            await carol.read(message)

    async def full_history() -> Any:
        page = await bob.history(channel.channel_id)
        return page if len(page.messages) >= len(before + after) else None

    page = await eventually(full_history, "the archive to catch up", TIMEOUT_S)
    assert [m.body for m in page.messages] == before + after  # history, decrypted on bob's device
    with pytest.raises(ParleyError) as gone:
        await carol.history(channel.channel_id)
    assert gone.value.code == grpc.StatusCode.PERMISSION_DENIED
    stream.cancel()
    for client in (alice, bob, carol):
        await client.close()

    # Nothing on the server side holds the plaintext: stop the platform so every file is flushed.
    assert platform.stop() == 0
    try:
        leaks = files_containing(platform.data_dir, [marker.encode()])
        assert leaks == {}, f"plaintext found on the server side: {leaks}"
        archive = sqlite3.connect(platform.data_dir / "storage" / "archive.db")
        try:
            query = "SELECT count(*) FROM events WHERE aggregate_id = ? AND event_type LIKE '%MessagePosted'"
            (archived,) = archive.execute(query, (channel.channel_id,)).fetchone()
        finally:
            archive.close()
        assert archived == len(before + after)  # the messages did reach the archive the scan looked at
        assert any((platform.data_dir / "nats" / "jetstream").rglob("*.blk"))
    finally:
        platform.start()


async def test_cli_chat_in_an_encrypted_channel_sends_ciphertext_a_member_can_read(platform: RunningPlatform) -> None:
    owner = f"cli-e2ee-{uuid.uuid4().hex[:8]}"
    platform.cli("register", owner, stdin=PASSWORD + "\n")
    platform.cli("login", owner, stdin=PASSWORD + "\n")
    created = platform.cli("--as", owner, "create-channel", "--encrypted", "cli-secret").stdout
    channel_id = created.strip().rsplit(" ", 1)[-1]
    bob = await new_user(platform, "bob")
    await bob.enable_e2ee("bob-tablet")
    await bob.join_channel(channel_id)

    marker = uuid.uuid4().hex
    chat = await asyncio.to_thread(platform.cli, "--as", owner, "chat", "cli-secret", stdin=f"typed {marker}\n")
    assert "end-to-end encrypted; this terminal is device cli-" in chat.stdout
    assert "not sent" not in chat.stdout

    async def archived() -> HistoryPage | None:
        page = await bob.history(channel_id)
        return page if page.messages else None

    page = await eventually(archived, "the archive to catch up", TIMEOUT_S)
    assert [m.body for m in page.messages] == [f"typed {marker}"]
    assert files_containing(platform.data_dir / "storage", [marker.encode()]) == {}  # archive.db and its WAL

    # A second run is the same device (kept in the CLI's data folder), and it still reads the first.
    device_id = chat.stdout.split("this terminal is device ", 1)[1].split()[0]
    again = await asyncio.to_thread(platform.cli, "--as", owner, "chat", "cli-secret", stdin="")
    assert f"this terminal is device {device_id} (kept from an earlier run)" in again.stdout
    assert f"typed {marker}" in again.stdout
    assert [d.device_id for d in await bob.list_devices([page.messages[0].sender_id])] == [device_id]
    await bob.close()
