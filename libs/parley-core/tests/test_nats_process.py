"""The nats-server child process: fails fast with its log, and stops or dies on request."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from parley_core.nats_process import NatsServerProcess
from parley_core.net import free_port
from parley_testing.nats import NatsTestServer

pytestmark = pytest.mark.asyncio  # also runs where asyncio_mode is not auto


async def test_bad_config_fails_fast_with_log_tail(tmp_path: Path) -> None:
    config = tmp_path / "nats.conf"
    config.write_text("this is { not a valid config\n")
    process = NatsServerProcess(config_path=config, host="127.0.0.1", port=free_port(), log_path=tmp_path / "n.log")

    with pytest.raises(RuntimeError, match="exited with code") as raised:
        await process.start()

    assert str(config) in str(raised.value)
    assert "Parse error" in str(raised.value)
    assert not process.running


async def test_stop_is_clean_and_idempotent(nats_server: NatsTestServer) -> None:
    process = nats_server.process
    assert process.running
    assert process.url == nats_server.url

    await process.stop()
    await process.stop()

    assert not process.running


async def test_kill_disconnects_clients(nats_server: NatsTestServer) -> None:
    disconnected = asyncio.Event()

    async def on_disconnect() -> None:
        disconnected.set()

    await nats_server.connect("platform", disconnected_cb=on_disconnect)

    nats_server.process.kill()

    assert not nats_server.process.running
    await asyncio.wait_for(disconnected.wait(), 5)
