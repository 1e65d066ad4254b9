"""Devices through the running platform: auth's key directory as the only one, device removal,
devices kept across restarts, trust on first use, MFA login, and the CLI's device commands.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP
from parley.messaging.v1.events_pb2 import ToDeviceSent

from parley_client import DeviceKeyChanged, DeviceStore, MfaRequired, ParleyClient, ParleyError, fingerprint
from parley_client.e2ee import E2eeDevice
from parley_testing.platform import TEST_DEFAULTS, RunningPlatform
from parley_testing.stack import PASSWORD
from parley_testing.waiting import eventually

pytestmark = pytest.mark.e2e


async def new_user(platform: RunningPlatform, prefix: str) -> tuple[ParleyClient, str]:
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    return await platform.new_user(name), name


async def encrypted_room(owner: ParleyClient, *others: ParleyClient) -> str:
    channel = await owner.create_channel(f"room-{uuid.uuid4().hex[:6]}", encrypted=True)
    for other in others:
        await other.join_channel(channel.channel_id)
    return channel.channel_id


async def laptop_and_phone_in_an_encrypted_room(
    platform: RunningPlatform,
) -> tuple[ParleyClient, str, ParleyClient, str]:
    """alice with the device alice-laptop and bob with bob-phone, in a new encrypted room of alice's:
    alice, her name, bob and the room's id."""
    alice, alice_name = await new_user(platform, "alice")
    bob, _ = await new_user(platform, "bob")
    await alice.enable_e2ee("alice-laptop")
    await bob.enable_e2ee("bob-phone")
    return alice, alice_name, bob, await encrypted_room(alice, bob)


async def test_a_removed_device_gets_no_later_keys_and_loses_its_queue(platform: RunningPlatform) -> None:
    alice, _ = await new_user(platform, "alice")
    bob_phone, bob_name = await new_user(platform, "bob")
    bob_tablet = platform.client()
    await bob_tablet.login(bob_name, PASSWORD)
    await alice.enable_e2ee("alice-laptop")
    await bob_phone.enable_e2ee("bob-phone")
    await bob_tablet.enable_e2ee("bob-tablet")
    channel_id = await encrypted_room(alice, bob_phone)

    before = await alice.send(channel_id, "for both of bob's devices")
    assert await bob_tablet.read(before) == "for both of bob's devices"

    await bob_phone.remove_device("bob-tablet")
    assert [d.device_id for d in await alice.list_devices([bob_phone.user_id or ""])] == ["bob-phone"]
    with pytest.raises(ParleyError) as gone:
        await bob_tablet.fetch_to_device("bob-tablet", after_queue_seq=0)
    assert gone.value.code == grpc.StatusCode.PERMISSION_DENIED

    after = await alice.send(channel_id, "only for the phone")
    old_session = before.body.split(":")[2]
    assert after.body.split(":")[2] != old_session, "the group session must be replaced when a device goes"
    assert await bob_phone.read(after) == "only for the phone"
    with pytest.raises(ParleyError) as unreadable:
        await bob_tablet.read(after)  # it has no key, and the relay no longer serves it
    assert unreadable.value.code == grpc.StatusCode.PERMISSION_DENIED
    # Sending to the removed device is refused by messaging's relay, which follows auth's events.
    with pytest.raises(ParleyError) as refused:
        await _send_raw(alice, bob_phone.user_id or "", "bob-tablet")
    assert refused.value.code == grpc.StatusCode.NOT_FOUND
    for client in (alice, bob_phone, bob_tablet):
        await client.close()


async def _send_raw(sender: ParleyClient, user_id: str, device_id: str) -> None:
    assert sender.e2ee is not None
    message = ToDeviceSent(
        recipient_user_id=user_id,
        recipient_device_id=device_id,
        sender_device_id=sender.e2ee.device_id,
        sender_identity_key=sender.e2ee.identity_key,
        olm_type=1,
        ciphertext=b"opaque",
    )
    await sender.send_to_device([message])


async def test_a_stored_device_is_the_same_device_after_a_restart(platform: RunningPlatform, tmp_path: Path) -> None:
    alice, _ = await new_user(platform, "alice")
    bob, bob_name = await new_user(platform, "bob")
    await alice.enable_e2ee("alice-laptop")
    store = DeviceStore(tmp_path / "bob.device.json")
    device = await bob.enable_e2ee("bob-desk", store=store)
    channel_id = await encrypted_room(alice, bob)
    first = await alice.send(channel_id, "before the restart")
    assert await bob.read(first) == "before the restart"
    assert store.path.stat().st_mode & 0o777 == 0o600
    assert store.key_path.stat().st_mode & 0o777 == 0o600
    assert b"before the restart" not in store.path.read_bytes()
    await bob.close()

    again = platform.client()
    await again.login(bob_name, PASSWORD)
    restored = await again.enable_e2ee("another-id", store=store)
    assert restored.device_id == device.device_id == "bob-desk"
    assert [d.device_id for d in await again.list_devices([again.user_id or ""])] == ["bob-desk"]
    history = await again.history(channel_id)
    assert [m.body for m in history.messages] == ["before the restart"]
    second = await alice.send(channel_id, "after the restart")
    assert await again.read(second) == "after the restart"
    # Bob's restored device answers on the Olm session alice's device already has.
    reply = await again.send(channel_id, "still me")
    assert await alice.read(reply) == "still me"
    for client in (alice, again):
        await client.close()


async def test_a_device_whose_key_changed_is_not_encrypted_to(platform: RunningPlatform) -> None:
    alice, _, bob, channel_id = await laptop_and_phone_in_an_encrypted_room(platform)
    await alice.send(channel_id, "first sight pins bob-phone")
    assert alice.e2ee is not None
    key = (bob.user_id or "", "bob-phone")
    assert key in alice.e2ee.pins.ed25519
    # As if the directory now served another key for the same device (a hostile server).
    alice.e2ee.pins.ed25519[key] = base64.b64encode(bytes(32)).decode().rstrip("=")
    with pytest.raises(DeviceKeyChanged, match="another identity key"):
        await alice.send(channel_id, "must not be encrypted to an impostor")
    for client in (alice, bob):
        await client.close()


async def test_a_direct_conversation_with_an_unknown_user_is_not_found(platform: RunningPlatform) -> None:
    alice, _ = await new_user(platform, "alice")
    bob, _ = await new_user(platform, "bob")
    with pytest.raises(ParleyError) as unknown:
        await alice.create_direct([uuid.uuid4().hex])
    assert unknown.value.code == grpc.StatusCode.NOT_FOUND
    assert "no such user" in unknown.value.message
    direct = await alice.create_direct([bob.user_id or ""])
    assert sorted(direct.member_ids) == sorted([alice.user_id, bob.user_id])
    for client in (alice, bob):
        await client.close()


def authenticator(secret_base32: str) -> TOTP:
    secret = base64.b32decode(secret_base32 + "=" * (-len(secret_base32) % 8))
    return TOTP(secret, 6, SHA1(), 30)


async def test_login_with_mfa_from_the_sdk_and_the_cli_prompt(platform: RunningPlatform) -> None:
    client, name = await new_user(platform, "mfa")
    begun = await client.begin_totp_enrolment()
    app = authenticator(begun.secret_base32)
    recovery = await client.confirm_totp_enrolment(app.generate(int(time.time())).decode())

    fresh = platform.client()
    with pytest.raises(MfaRequired):
        await fresh.login(name, PASSWORD)
    logged = await fresh.login(name, PASSWORD, recovery_code=recovery[0])
    assert logged.user_id == client.user_id
    with pytest.raises(ParleyError) as reused:
        await fresh.login(name, PASSWORD, recovery_code=recovery[0])
    assert reused.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert not isinstance(reused.value, MfaRequired)

    # The CLI asks for the second factor after the password (here both come on stdin).
    done = platform.cli("login", name, stdin=f"{PASSWORD}\n{recovery[1]}\n")
    assert f"logged in as {name}" in done.stdout
    refused = platform.cli("login", name, stdin=f"{PASSWORD}\n{recovery[1]}\n", check=False)
    assert refused.returncode == 1
    assert "already used" in refused.stderr
    await client.close()
    await fresh.close()


async def test_cli_lists_fingerprints_verifies_and_keeps_its_device(platform: RunningPlatform) -> None:
    alice, _ = await new_user(platform, "alice")
    alice_device = await alice.enable_e2ee("alice-laptop")
    _, bob_name = await new_user(platform, "bob")
    platform.cli("login", bob_name, stdin=PASSWORD + "\n")
    alice_id = alice.user_id or ""
    listed = await alice.list_devices([alice_id])
    expected = fingerprint(listed[0])

    shown = platform.cli("--as", bob_name, "devices", alice_id).stdout
    assert "alice-laptop" in shown
    assert expected in shown
    assert "pinned on first sight" in shown
    verified = platform.cli("--as", bob_name, "devices", alice_id, "--verify", "alice-laptop").stdout
    assert "marked alice-laptop" in verified
    assert "verified" in platform.cli("--as", bob_name, "devices", alice_id).stdout

    # Bob's terminal device is created once and kept (0600) in the CLI's data folder.
    mine_first = platform.cli("--as", bob_name, "devices").stdout
    mine_again = platform.cli("--as", bob_name, "devices").stdout
    assert "(this terminal)" in mine_first
    assert mine_first.count("(this terminal)") == mine_again.count("(this terminal)") == 1
    assert mine_first.split()[0] == mine_again.split()[0]
    stored = platform.data_dir / "cli" / f"{bob_name.casefold()}.device.json"
    assert stored.stat().st_mode & 0o777 == 0o600
    assert alice_device.device_id == "alice-laptop"
    await alice.close()


async def test_an_edit_in_an_encrypted_channel_is_encrypted_on_the_device(platform: RunningPlatform) -> None:
    alice, alice_name, bob, channel_id = await laptop_and_phone_in_an_encrypted_room(platform)
    sent = await alice.send(channel_id, "draft")

    edited = await alice.edit(channel_id, sent.channel_seq, "final")
    assert edited.body.startswith("megolm.v1:")
    assert await bob.read(edited) == "final"
    # Without a device the same edit would be plaintext, which the server refuses there.
    plain = platform.client()
    await plain.login(alice_name, PASSWORD)
    with pytest.raises(ParleyError) as refused:
        await plain.edit(channel_id, sent.channel_seq, "in the clear")
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    for client in (alice, bob, plain):
        await client.close()


async def until_cli_shows(platform: RunningPlatform, *args: str, expected: str) -> str:
    """The CLI's output once it shows `expected` (the archive follows messaging's events, so
    history catches up a moment after a send or an edit); else what it last showed."""
    last = [""]

    async def probe() -> str | None:
        last[0] = platform.cli(*args).stdout
        return last[0] if expected in last[0] else None

    try:
        return await eventually(probe, f"`parley {' '.join(args)}` to show {expected!r}")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; it showed:\n{last[0]}") from None


async def test_cli_sends_edits_and_reads_an_encrypted_channel_with_its_kept_device(platform: RunningPlatform) -> None:
    alice, alice_name = await new_user(platform, "alice")
    await alice.enable_e2ee("alice-laptop")
    bob, bob_name = await new_user(platform, "bob")
    platform.cli("login", bob_name, stdin=PASSWORD + "\n")
    room = f"secret-{uuid.uuid4().hex[:6]}"
    channel_id = (await alice.create_channel(room, encrypted=True)).channel_id
    await bob.join_channel(channel_id)

    assert "sent #1" in platform.cli("--as", bob_name, "send", room, "the merger closes friday").stdout
    assert "edited #1" in platform.cli("--as", bob_name, "edit", room, "1", "the merger closes monday").stdout
    # `/edit` typed in `parley chat` is encrypted the same way (stdin ends: chat leaves after it).
    chat = platform.cli("--as", bob_name, "chat", room, stdin="/edit 1 the merger closes tuesday\n")
    assert "not sent" not in chat.stdout, chat.stdout
    assert "kept from an earlier run" in chat.stdout  # the device `send` made is the one chat uses

    # Bob's CLI reads his own (edited) message; the server holds only ciphertext, which alice's
    # device reads.
    # (history marking edits is another fix's: the text is what counts here)
    shown = await until_cli_shows(
        platform, "--as", bob_name, "history", room, expected=f"{bob_name}: the merger closes tuesday"
    )
    assert "(encrypted" not in shown
    raw = platform.client()
    await raw.login(alice_name, PASSWORD)  # no device: sees what the server stored
    stored = (await raw.history(channel_id)).messages[0]
    assert stored.body.startswith("megolm.v1:")
    assert await alice.read(stored) == "the merger closes tuesday"

    # What alice sends after bob's device exists reaches it too.
    await alice.send(channel_id, "see you there")
    await until_cli_shows(platform, "--as", bob_name, "history", room, expected="see you there")
    for client in (alice, bob, raw):
        await client.close()


async def test_cli_removes_this_terminals_own_device_and_makes_a_new_one(platform: RunningPlatform) -> None:
    bob, bob_name = await new_user(platform, "bob")
    platform.cli("login", bob_name, stdin=PASSWORD + "\n")
    first = platform.cli("--as", bob_name, "devices").stdout.split()[0]
    stored = platform.data_dir / "cli" / f"{bob_name.casefold()}.device.json"
    assert stored.exists()

    removed = platform.cli("--as", bob_name, "devices", "--remove", first)
    assert f"removed device {first}" in removed.stdout
    assert "this terminal's device" in removed.stdout
    assert not stored.exists()
    assert not stored.with_name(stored.name + ".key").exists()
    assert first not in [d.device_id for d in await bob.list_devices([bob.user_id or ""])]

    again = platform.cli("--as", bob_name, "devices").stdout
    assert "(this terminal)" in again
    assert again.split()[0] != first
    await bob.close()


async def test_cli_lists_devices_of_a_user_by_name_and_refuses_an_unknown_name(platform: RunningPlatform) -> None:
    alice, alice_name = await new_user(platform, "alice")
    await alice.enable_e2ee("alice-phone")
    _, bob_name = await new_user(platform, "bob")
    platform.cli("login", bob_name, stdin=PASSWORD + "\n")

    by_name = platform.cli("--as", bob_name, "devices", alice_name).stdout
    assert "alice-phone" in by_name
    unknown = platform.cli("--as", bob_name, "devices", f"nobody{uuid.uuid4().hex[:8]}", check=False)
    assert unknown.returncode == 1
    assert "no user named" in unknown.stderr
    await alice.close()


async def test_cli_enrols_mfa_and_prints_the_recovery_codes_once(platform: RunningPlatform) -> None:
    client, name = await new_user(platform, "enrol")
    platform.cli("login", name, stdin=PASSWORD + "\n")
    enrol = subprocess.Popen(
        [sys.executable, "-m", "parley_cli", "--data-dir", str(platform.data_dir), "--as", name, "mfa", "enrol"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **TEST_DEFAULTS, **platform.env},
    )
    assert enrol.stdout is not None
    shown: list[str] = []
    while (line := enrol.stdout.readline()) and not line.startswith("secret: "):
        shown.append(line)
    assert line.startswith("secret: "), "".join(shown) + (enrol.stderr.read() if enrol.stderr else "")
    assert any(s.startswith("otpauth://totp/") for s in shown)
    code = authenticator(line.removeprefix("secret: ").strip()).generate(int(time.time())).decode()
    rest, errors = enrol.communicate(code + "\n", timeout=60)
    assert enrol.returncode == 0, errors
    lines = rest.splitlines()
    recovery = lines[next(i for i, text in enumerate(lines) if text.startswith("recovery codes")) + 1 :]
    assert len(recovery) == 10

    fresh = platform.client()
    with pytest.raises(MfaRequired):
        await fresh.login(name, PASSWORD)
    assert (await fresh.login(name, PASSWORD, recovery_code=recovery[0])).user_id == client.user_id
    await client.close()
    await fresh.close()


async def test_a_member_cannot_fill_the_relay_with_messages_no_device_fetches(platform: RunningPlatform) -> None:
    """The relay keeps what a device has not fetched yet. A member sending to a spare device of
    their own that never fetches stops at the cap per sender (RESOURCE_EXHAUSTED), while another
    member's messages still go through; once the device fetches, what it holds leaves the queue
    and the sender may send again."""
    mallory, mallory_name = await new_user(platform, "mallory")
    spare = platform.client()
    await spare.login(mallory_name, PASSWORD)
    laptop = await mallory.enable_e2ee("laptop")
    await spare.enable_e2ee("spare")
    bob, _ = await new_user(platform, "bob")
    phone = await bob.enable_e2ee("phone")
    blob = os.urandom(60 * 1024)  # under the gateway's 64 KiB request limit

    def message(recipient: ParleyClient, device_id: str, sender: E2eeDevice) -> ToDeviceSent:
        return ToDeviceSent(
            recipient_user_id=recipient.user_id,
            recipient_device_id=device_id,
            sender_device_id=sender.device_id,
            sender_identity_key=sender.identity_key,
            olm_type=1,
            ciphertext=blob,
        )

    cap = 16 * 1024 * 1024 // len(blob)
    for _ in range(cap):
        await mallory.send_to_device([message(spare, "spare", laptop)])
    with pytest.raises(ParleyError) as full:
        await mallory.send_to_device([message(spare, "spare", laptop)])
    assert full.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "have not fetched yet" in str(full.value)
    await bob.send_to_device([message(bob, "phone", phone)])  # not held back by mallory's backlog

    waiting = await spare.fetch_to_device("spare", after_queue_seq=0)
    assert 0 < len(waiting) <= 2 * 1024 * 1024 // len(blob)  # a page a client can receive
    held = waiting[-1].queue_seq
    await spare.fetch_to_device("spare", after_queue_seq=held)  # it holds those: they leave the queue
    assert (await spare.fetch_to_device("spare", after_queue_seq=0))[0].queue_seq == held + 1
    await mallory.send_to_device([message(spare, "spare", laptop)])
