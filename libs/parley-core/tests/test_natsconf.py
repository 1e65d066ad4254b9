"""Broker configuration: passwords survive restarts, and the rendered config is what the server reads."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from parley_core import nats_accounts, topology
from parley_core.nats_process import NatsServerProcess
from parley_core.natsconf import (
    LEGACY_ACCOUNT,
    ClusterConfig,
    _quote,
    ensure_nats_passwords,
    holds_pre_account_streams,
    render_server_config,
)
from parley_core.net import free_port
from parley_core.pki import Pki

USERS = (*topology.SERVICES, topology.PLATFORM_USER)


def test_passwords_are_generated_once_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "nats-passwords.json"
    first = ensure_nats_passwords(path, ["auth"])
    content = path.read_bytes()

    assert ensure_nats_passwords(path, ["auth"]) == first
    assert path.read_bytes() == content
    both = ensure_nats_passwords(path, ["auth", "storage"])

    assert both["auth"] == first["auth"]
    assert len(both["storage"]) >= 32
    assert json.loads(path.read_text()) == both
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_quoting_keeps_subjects_literal() -> None:
    assert _quote("$JS.API.>") == '"$JS.API.>"'
    assert _quote('a"b\\c\nd\x01') == '"a\\"b\\\\c\\nd\\x01"'


def test_config_requires_every_user(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="storage"):
        render_server_config(
            host="127.0.0.1",
            port=1,
            store_dir=tmp_path,
            pki=Pki(directory=tmp_path, ca_cert=tmp_path / "ca"),
            passwords={u: "x" for u in USERS if u != "storage"},
        )


async def _started_once(pki: Pki, tmp_path: Path, **config: Any) -> str:
    """nats-server started on a free port with the rendered config (TLS from `pki`, the store in
    tmp_path/store unless `config` names one) and stopped; its log."""
    path = tmp_path / "nats.conf"
    port = free_port()
    config = {"store_dir": tmp_path / "store", **config}
    path.write_text(render_server_config(host="127.0.0.1", port=port, pki=pki, **config))
    async with NatsServerProcess(config_path=path, host="127.0.0.1", port=port, log_path=tmp_path / "n.log"):
        pass
    return (tmp_path / "n.log").read_text()


@pytest.mark.asyncio
async def test_server_accepts_config_with_store_encryption(pki: Pki, tmp_path: Path) -> None:
    """nats-server's own parser is the judge of the quoting; `-t` would not start JetStream."""
    log = await _started_once(
        pki,
        tmp_path,
        store_dir=tmp_path / "store with space",
        passwords=dict.fromkeys(USERS, 'pa$$ "word"'),
        store_cipher_key="s3cret$key",
    )
    assert "Encryption:" in log
    assert "ChaCha20-Poly1305" in log


@pytest.mark.asyncio
async def test_cluster_node_config_is_accepted_with_tls_routes(pki: Pki, tmp_path: Path) -> None:
    """One node of a three-node cluster starts with its rendered `cluster {}` block."""
    route_port = free_port()
    log = await _started_once(
        pki,
        tmp_path,
        passwords=dict.fromkeys(USERS, "pw"),
        server_name="node-a",
        cluster=ClusterConfig(
            name="parley",
            host="127.0.0.1",
            port=route_port,
            routes=(f"127.0.0.1:{route_port}", f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"),
            route_user="route",
            route_password="route-pw",
        ),
    )
    assert f"Listening for route connections on 127.0.0.1:{route_port}" in log
    text = (tmp_path / "nats.conf").read_text()
    assert "verify: true" in text.split("cluster {", 1)[1]
    assert '"nats-route://route:route-pw@127.0.0.1:' in text


def test_nobody_logs_into_the_streams_account_and_each_user_into_its_own(tmp_path: Path) -> None:
    """A subscriber in the streams' account would be the interest a push consumer waits for
    before it delivers onto a stream's subject; each user is the one user of its account."""
    text = render_server_config(
        host="127.0.0.1",
        port=1,
        store_dir=tmp_path,
        pki=Pki(directory=tmp_path, ca_cert=tmp_path / "ca"),
        passwords=dict.fromkeys(USERS, "pw"),
    )
    accounts = text.split("accounts {", 1)[1]
    blocks = accounts.split(f"\n  {nats_accounts.account_of(USERS[0])}: {{", 1)
    streams_block = blocks[0]
    assert f"{nats_accounts.STREAMS_ACCOUNT}: {{" in streams_block
    assert "users:" not in streams_block
    assert "jetstream: enabled" in streams_block
    for user in USERS:
        assert text.count(f'user: "{user}"') == 1
        assert f"  {nats_accounts.account_of(user)}: {{" in accounts
    assert "\nauthorization {" not in text  # no user outside an account


def test_a_store_of_the_layout_before_accounts_is_recognised(tmp_path: Path) -> None:
    """`parley up` refuses such a data folder rather than start on an empty log beside it."""
    store = tmp_path / "jetstream"
    assert not holds_pre_account_streams(store)
    (store / "jetstream" / LEGACY_ACCOUNT / "streams" / "AUTH").mkdir(parents=True)
    assert holds_pre_account_streams(store)
    (store / "jetstream" / nats_accounts.STREAMS_ACCOUNT / "streams").mkdir(parents=True)
    assert not holds_pre_account_streams(store)
