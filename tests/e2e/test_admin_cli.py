"""The first owner made with `parley admin create-user`, then account administration by CLI."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import uuid

import grpc
import pytest
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP

from parley_client import ParleyClient, ParleyError
from parley_core.testing.platform import RunningPlatform
from parley_core.testing.waiting import eventually, wait_until

pytestmark = pytest.mark.e2e

PASSWORD = "a-long-enough-passphrase"


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


async def test_admin_cli_creates_the_first_owner_and_disables_an_account(platform: RunningPlatform) -> None:
    owner, member = unique("root"), unique("ivy")
    created = platform.cli("admin", "create-user", owner, "--role", "owner", stdin=PASSWORD + "\n")
    assert f"created {owner}" in created.stdout
    assert "role=owner" in created.stdout
    platform.cli("admin", "create-user", member, stdin=PASSWORD + "\n")
    assert "role=member active" in platform.cli("admin", "show", member).stdout

    async with ParleyClient.connect(platform.gateway_address, ca_cert=platform.ca_cert.read_bytes()) as client:
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


async def test_sdk_refresh_and_logout(platform: RunningPlatform) -> None:
    name = unique("jo")
    platform.cli("admin", "create-user", name, stdin=PASSWORD + "\n")
    async with ParleyClient.connect(platform.gateway_address, ca_cert=platform.ca_cert.read_bytes()) as client:
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
    async with ParleyClient.connect(platform.gateway_address, ca_cert=platform.ca_cert.read_bytes()) as other:
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


def authenticator(secret_base32: str) -> TOTP:
    secret = base64.b32decode(secret_base32 + "=" * (-len(secret_base32) % 8))
    return TOTP(secret, 6, SHA1(), 30)


async def test_mfa_by_cli_new_recovery_codes_and_an_admin_reset(platform: RunningPlatform) -> None:
    name = unique("mo")
    platform.cli("admin", "create-user", name, stdin=PASSWORD + "\n")
    async with ParleyClient.connect(platform.gateway_address, ca_cert=platform.ca_cert.read_bytes()) as client:
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
