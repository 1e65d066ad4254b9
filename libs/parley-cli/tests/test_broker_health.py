"""`parley status`'s broker check against a real TLS nats-server: SERVING while it runs, DOWN once killed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parley_cli.health import check_broker
from parley_testing.nats import NatsTestServer

pytestmark = pytest.mark.asyncio


async def test_the_broker_is_serving_while_it_runs_and_down_once_killed(
    nats_server: NatsTestServer, tmp_path: Path
) -> None:
    (tmp_path / "secrets").mkdir(mode=0o700)
    passwords = tmp_path / "secrets" / "nats-passwords.json"
    passwords.write_text(json.dumps(nats_server.passwords))
    passwords.chmod(0o600)

    assert await check_broker(tmp_path, url=nats_server.url, ca_cert=nats_server.ca_cert) == "SERVING"
    nats_server.process.kill()
    assert await check_broker(tmp_path, url=nats_server.url, ca_cert=nats_server.ca_cert) == "DOWN"
