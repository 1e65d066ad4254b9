"""The first owner made with `parley admin create-user`, then account administration by CLI."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP

from parley_client import ParleyError
from parley_testing.platform import RunningPlatform
from parley_testing.stack import PASSWORD
from parley_testing.waiting import eventually, wait_until

pytestmark = pytest.mark.e2e


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


async def test_admin_cli_creates_the_first_owner_and_disables_an_account(platform: RunningPlatform) -> None:
    owner, member = unique("root"), unique("ivy")
    created = platform.cli("admin", "create-user", owner, "--role", "owner", stdin=PASSWORD + "\n")
    assert f"created {owner}" in created.stdout
    assert "role=owner" in created.stdout
    platform.cli("admin", "create-user", member, stdin=PASSWORD + "\n")
    assert "role=member active" in platform.cli("admin", "show", member).stdout

    async with platform.client() as client:
        login = await client.login(member, PASSWORD)
        assert login.role == "member"
        await client.create_channel("ops")

        assert "disabled" in platform.cli("admin", "disable", member, "--reason", "offboarded").stdout
        with pytest.raises(ParleyError) as refused:
            await client.create_channel("again")
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED

        assert "active" in platform.cli("admin", "enable", member).stdout
        assert "role=guest" in platform.cli("admin", "set-role", member, "guest").stdout
        with pytest.raises(ParleyError) as denied:
            await client.create_channel("guests-cannot")
        assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_admin_cli_reports_bad_input_without_a_trace(platform: RunningPlatform) -> None:
    weak = platform.cli("admin", "create-user", unique("weak"), stdin="password123456\n", check=False)
    assert weak.returncode == 1
    assert "INVALID_ARGUMENT" in weak.stderr
    assert "Traceback" not in weak.stderr
    # No password at all is told where one comes from, not that it is too short.
    empty = platform.cli("admin", "create-user", unique("empty"), stdin="", check=False)
    assert empty.returncode == 1
    assert "no password given" in empty.stderr
    assert "standard input" in empty.stderr
    missing = platform.cli("admin", "show", "nobody-at-all", check=False)
    assert "NOT_FOUND" in missing.stderr


def test_admin_cli_lift_slowdown_names_an_address_that_is_not_slowed(platform: RunningPlatform) -> None:
    """Lifting itself is shown in services/storage/tests/test_detection.py (the same RPC, after a
    spraying scenario); here the command reaches auth and says what is wrong, without a trace."""
    refused = platform.cli("admin", "lift-slowdown", "192.0.2.201", "--reason", "trial", check=False)
    assert refused.returncode == 1
    assert "NOT_FOUND" in refused.stderr
    assert "192.0.2.201 is not slowed down; addresses slowed now: none" in refused.stderr
    assert "Traceback" not in refused.stderr
    garbage = platform.cli("admin", "lift-slowdown", "garbage", check=False)
    assert garbage.returncode == 1
    assert "INVALID_ARGUMENT" in garbage.stderr
    assert "'garbage' is not a client address" in garbage.stderr


async def test_sdk_refresh_and_logout(platform: RunningPlatform) -> None:
    name = unique("jo")
    platform.cli("admin", "create-user", name, stdin=PASSWORD + "\n")
    async with platform.client() as client:
        first = await client.login(name, PASSWORD)
        second = await client.refresh()
        assert second.session_id == first.session_id
        assert second.refresh_token != first.refresh_token
        [session] = await client.sessions()
        assert session.session_id == first.session_id
        await client.logout()
        client.use_token(second.access_token)
        with pytest.raises(ParleyError) as refused:
            await client.my_channels()
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED


async def test_a_user_changes_their_own_password_from_the_cli(platform: RunningPlatform) -> None:
    name, new_password = unique("pat"), "another-long-enough-passphrase"
    async with platform.client() as other:
        await other.register(name, PASSWORD)
        platform.cli("login", name, stdin=PASSWORD + "\n")
        await other.login(name, PASSWORD)  # another session of the same user

        wrong = platform.cli("--as", name, "password", stdin=f"not-the-password\n{new_password}\n", check=False)
        assert "the current password is wrong" in wrong.stderr
        assert "Traceback" not in wrong.stderr
        changed = platform.cli("--as", name, "password", stdin=f"{PASSWORD}\n{new_password}\n")
        assert f"password of {name} changed" in changed.stdout

        async def signed_out() -> bool | None:
            try:
                await other.my_channels()
            except ParleyError as exc:
                return True if exc.code == grpc.StatusCode.UNAUTHENTICATED else None
            return None

        await eventually(signed_out, "the other session to be signed out")
        with pytest.raises(ParleyError) as old_password:
            await other.login(name, PASSWORD)
        assert old_password.value.code == grpc.StatusCode.UNAUTHENTICATED
        await other.login(name, new_password)
        # The session that changed it stays: the token `parley login` saved still works.
        saved = json.loads((platform.data_dir / "cli" / f"{name}.json").read_text())
        other.use_token(saved["access_token"], saved["user_id"])
        await other.my_channels()


def test_admin_cli_rotates_the_signing_key_and_makes_invitations(platform: RunningPlatform) -> None:
    rotated = platform.cli("admin", "rotate-signing-key")
    assert "signing with new key" in rotated.stdout
    invite = platform.cli("admin", "invite", "--role", "guest")
    code = invite.stdout.strip().splitlines()[-1]
    assert len(code) >= 24
    assert " UTC)" in invite.stdout  # a date a person reads, not a unix number
    assert "PARLEY_REGISTRATION=invite" in invite.stderr  # where such a code works
    unknown = platform.cli("admin", "retire-signing-key", "0123456789abcdef", check=False)
    assert "NOT_FOUND" in unknown.stderr


def test_audit_verify_on_the_running_platform(platform: RunningPlatform) -> None:
    name = unique("aud")
    platform.cli("admin", "create-user", name, stdin=PASSWORD + "\n")

    def verified() -> subprocess.CompletedProcess[str]:
        return platform.cli("audit", "verify", check=False)

    # The archive trails the stream: until it caught up, the verifier reports a truncated chain.
    wait_until(lambda: "truncated" not in verified().stdout, timeout=60, what="the archive to catch up")
    result = verified()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "audit chain intact" in result.stdout


def test_audit_checkpoint_and_verify_against_it_and_a_damaged_row(platform: RunningPlatform, tmp_path: Path) -> None:
    platform.cli("admin", "create-user", unique("chk"), stdin=PASSWORD + "\n")
    checkpoint = tmp_path / "kept-elsewhere.json"
    taken = platform.cli("audit", "checkpoint", "--out", str(checkpoint))
    assert f"written to {checkpoint}" in taken.stdout
    assert "keep it where the platform's operators cannot change it" in taken.stdout
    again = platform.cli("audit", "checkpoint", "--out", str(checkpoint), check=False)
    assert again.returncode == 1
    assert "exists; keep every checkpoint" in again.stderr
    index = json.loads(checkpoint.read_text())["chain_index"]

    def verified() -> subprocess.CompletedProcess[str]:
        return platform.cli("audit", "verify", "--checkpoint", str(checkpoint), check=False)

    wait_until(lambda: "truncated" not in verified().stdout, timeout=60, what="the archive to catch up")
    result = verified()
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"records up to #{index} match checkpoint {checkpoint}" in result.stdout

    # A damaged row (a byte of its ciphertext flipped) is named by number and position: exit 1.
    with sqlite3.connect(platform.data_dir / "storage" / "archive.db") as db:
        first = "SELECT stream_seq, aggregate_version, envelope FROM events WHERE stream = 'SEC' ORDER BY stream_seq"
        seq, number, envelope = db.execute(first).fetchone()
        damaged = bytearray(envelope)
        damaged[-1] ^= 0x01
        db.execute("UPDATE events SET envelope = ? WHERE stream = 'SEC' AND stream_seq = ?", (bytes(damaged), seq))
    try:
        result = verified()
        assert result.returncode == 1
        assert f"unreadable: record #{number} (at {seq})" in result.stdout
        assert "internal error" not in result.stdout + result.stderr
    finally:
        with sqlite3.connect(platform.data_dir / "storage" / "archive.db") as db:
            db.execute("UPDATE events SET envelope = ? WHERE stream = 'SEC' AND stream_seq = ?", (envelope, seq))
    unreadable = tmp_path / "not-a-checkpoint.json"
    unreadable.write_text("{}")
    refused = platform.cli("audit", "verify", "--checkpoint", str(unreadable), check=False)
    assert refused.returncode == 1
    assert f"checkpoint {unreadable}: not a Parley audit checkpoint" in refused.stderr


def secret_files(data_dir: Path) -> list[Path]:
    """What in a data folder is a secret: everything in secrets/ and cli/ (keys, passwords, saved
    logins), the broker configuration (its users' passwords), and any private key anywhere."""
    found = []
    for path in data_dir.rglob("*"):
        relative = path.relative_to(data_dir)
        if not path.is_file() or path.is_symlink() or relative.parts[:2] == ("agent", "envs"):
            continue
        private_key = path.suffix in (".pem", ".key") and b"PRIVATE KEY" in path.read_bytes()[:100]
        if relative.parts[0] in ("secrets", "cli") or path.name == "nats-server.conf" or private_key:
            found.append(path)
    return found


def test_every_secret_of_a_started_platform_is_in_owner_only_folders(platform: RunningPlatform) -> None:
    operator = unique("op")
    platform.cli("admin", "create-user", operator, "--role", "operator", stdin=PASSWORD + "\n")
    platform.cli("login", operator, stdin=PASSWORD + "\n")
    platform.cli("--as", operator, "patch", "key", "create", "auth")  # cli/keys/
    secrets = secret_files(platform.data_dir)
    where = {path.parent.relative_to(platform.data_dir).as_posix() for path in secrets}
    assert where >= {"secrets", "pki", "cli", "cli/keys", "nats", "patch-registry/keys", "patch-registry/keys/offline"}
    loose = []
    for path in secrets:
        if path.stat().st_mode & 0o077:
            loose.append(f"{path} is {oct(path.stat().st_mode & 0o777)}")
        folder = path.parent
        while folder != platform.data_dir.parent:  # every folder on the way to it, the data folder included
            if folder.stat().st_mode & 0o777 != 0o700:
                loose.append(f"{folder} (holding {path.name}) is {oct(folder.stat().st_mode & 0o777)}")
            folder = folder.parent
    assert sorted(set(loose)) == []


def authenticator(secret_base32: str) -> TOTP:
    secret = base64.b32decode(secret_base32 + "=" * (-len(secret_base32) % 8))
    return TOTP(secret, 6, SHA1(), 30)


async def test_mfa_by_cli_new_recovery_codes_and_an_admin_reset(platform: RunningPlatform) -> None:
    name = unique("mo")
    platform.cli("admin", "create-user", name, stdin=PASSWORD + "\n")
    async with platform.client() as client:
        await client.login(name, PASSWORD)
        app = authenticator((await client.begin_totp_enrolment()).secret_base32)
        first_codes = await client.confirm_totp_enrolment(app.generate(int(time.time())).decode())
        # The CLI logs in with the next code (the confirming one is spent).
        platform.cli("login", name, "--totp", app.generate(int(time.time()) + 30).decode(), stdin=PASSWORD + "\n")

        printed = platform.cli("--as", name, "mfa", "recovery-codes", stdin=PASSWORD + "\n").stdout
        new_codes = [line for line in printed.splitlines() if line.count("-") == 3]
        assert len(new_codes) == 10
        assert f"parley login {name} --totp CODE" in printed  # says how to use one
        with pytest.raises(ParleyError) as old_code:
            await client.login(name, PASSWORD, recovery_code=first_codes[0])
        assert old_code.value.code == grpc.StatusCode.UNAUTHENTICATED
        # A recovery code goes where the app's code goes.
        assert (
            f"logged in as {name}" in platform.cli("login", name, "--totp", new_codes[0], stdin=PASSWORD + "\n").stdout
        )
        # No code at all: the CLI says how to give either kind.
        missing = platform.cli("login", name, stdin=PASSWORD + "\n", check=False)
        assert missing.returncode == 1
        assert f"`parley login {name} --totp CODE`" in missing.stderr
        assert "recovery codes (xxxx-xxxx-xxxx-xxxx" in missing.stderr
        assert "Traceback" not in missing.stderr

        assert "removed" in platform.cli("admin", "reset-mfa", name, "--reason", "lost phone").stdout
        await client.login(name, PASSWORD)  # the password alone again
        again = platform.cli("admin", "reset-mfa", name, check=False)
        assert "FAILED_PRECONDITION" in again.stderr
        assert "Traceback" not in again.stderr
