"""Registration by invitation (PARLEY_REGISTRATION=invite) from the CLI and the SDK."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest

from parley_client import ParleyClient, ParleyError
from parley_testing.platform import RunningPlatform, platform_in
from parley_testing.stack import PASSWORD

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def invite_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlatform]:
    running = platform_in(tmp_path_factory.mktemp("invite"), PARLEY_REGISTRATION="invite")
    yield from running.served()


def invite_code(platform: RunningPlatform) -> str:
    return platform.cli("admin", "invite").stdout.strip().splitlines()[-1]


def test_cli_registers_with_an_invitation_code_and_not_without(invite_platform: RunningPlatform) -> None:
    name = f"inv{uuid.uuid4().hex[:8]}"
    refused = invite_platform.cli("register", name, stdin=PASSWORD + "\n", check=False)
    assert refused.returncode == 1
    assert "by invitation" in refused.stderr
    assert "Traceback" not in refused.stderr

    registered = invite_platform.cli("register", name, "--invite", invite_code(invite_platform), stdin=PASSWORD + "\n")
    assert f"registered {name}" in registered.stdout
    assert "logged in" in invite_platform.cli("login", name, stdin=PASSWORD + "\n").stdout


async def test_sdk_registers_with_invite_code(invite_platform: RunningPlatform) -> None:
    name = f"sdk{uuid.uuid4().hex[:8]}"
    ca = invite_platform.ca_cert.read_bytes()
    async with ParleyClient.connect(invite_platform.gateway_address, ca_cert=ca) as client:
        with pytest.raises(ParleyError) as refused:
            await client.register(name, PASSWORD)
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        response = await client.register(name, PASSWORD, invite_code=invite_code(invite_platform))
        assert response.username == name
        assert (await client.login(name, PASSWORD)).user_id == response.user_id
