"""The first host's service doors come back on the last run's ports: a joined host's bundle names
them (`parley host add`), so a restart of `parley up` must not move them, and says clearly when
another program holds one."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from parley_cli import platform_nats
from parley_cli.platform_doors import KeptPortTaken, open_service_door
from parley_cli.state import STATE_FILE
from parley_core.net import free_port


def last_run(data_dir: Path, ports: dict[str, int]) -> None:
    services = {name: {"port": port, "address": f"127.0.0.1:{port}"} for name, port in ports.items()}
    (data_dir / STATE_FILE).write_text(json.dumps({"running": False, "services": services}))


async def test_a_service_door_opens_on_the_last_runs_port(tmp_path: Path) -> None:
    kept = free_port()
    last_run(tmp_path, {"patch-registry": kept})
    door = await open_service_door(tmp_path, "patch-registry")
    try:
        assert door.port == kept
        assert door.address.endswith(f":{kept}")
    finally:
        await door.stop()


async def test_a_first_start_takes_a_free_port(tmp_path: Path) -> None:
    door = await open_service_door(tmp_path, "messaging")
    try:
        assert door.port > 0
    finally:
        await door.stop()


async def test_a_kept_port_held_by_another_program_stops_the_start_with_what_to_do(tmp_path: Path) -> None:
    with socket.socket() as holder:  # another program listening there meanwhile
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        last_run(tmp_path, {"auth": busy})
        with pytest.raises(KeptPortTaken) as refused:
            await open_service_door(tmp_path, "auth")
    message = str(refused.value)
    assert f"auth's front door cannot listen on port {busy} again" in message
    assert "Joined hosts call auth there" in message
    assert f"sport = :{busy}" in message
    assert isinstance(refused.value, RuntimeError)  # `parley up` says "start failed: …" and exits 1


def test_nats_nodes_never_get_one_port_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """The OS may name one free port twice while no node listens yet (a three-node start once
    gave node0 and node2 one client port): each node gets its own, and kept ports stay kept."""
    kept = free_port()
    repeated = iter([kept, 40001, 40001, 40001, 40002, 40003, 40004, 40005])
    monkeypatch.setattr(platform_nats, "free_port", lambda host: next(repeated))
    monkeypatch.setattr(platform_nats, "port_or_free", lambda port, host: port or platform_nats.free_port(host))
    ports = platform_nats.distinct_ports([None, kept, None, None, None, None], "127.0.0.1")
    assert ports[1] == kept
    assert len(set(ports)) == 6, ports
