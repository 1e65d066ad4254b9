"""What a joined host's bundle hands its node agent: a node-agent certificate (never the platform
identity's, which administers the platform) and no NATS user of its own; what it reaches with
that certificate is libs/parley-agent/tests/test_agent_credential.py."""

from __future__ import annotations

import json
from pathlib import Path

from parley_cli.host_bundle import make_bundle
from parley_cli.hosts import _install
from parley_core.pki import CA_NAME, Pki, tooling_identity
from parley_core.topology import NODE_AGENT, PLATFORM_USER, SERVICES


def bundle_for(pki: Pki, tmp_path: Path, services: tuple[str, ...]) -> Path:
    state = {
        "running": True,
        "nats_url": "tls://127.0.0.1:4999",
        "services": {name: {"address": f"127.0.0.1:{5000 + n}"} for n, name in enumerate(SERVICES)},
    }
    out = tmp_path / "bundle"
    make_bundle(
        state=state,
        pki=pki,
        passwords={name: f"password-of-{name}" for name in (*SERVICES, PLATFORM_USER)},
        host="host-b",
        services=services,
        out=out,
        secrets=tmp_path / "secrets",
    )
    return out


def test_a_hosts_agent_gets_a_node_agent_certificate_and_no_platform_credential(pki: Pki, tmp_path: Path) -> None:
    bundle = bundle_for(pki, tmp_path, ("messaging", "gateway"))
    issued = {p.name for p in (bundle / "pki").iterdir()}
    assert issued == {
        f"{CA_NAME}.crt",
        *(f"{name}.{kind}" for name in ("messaging", "gateway", NODE_AGENT) for kind in ("crt", "key")),
    }
    assert tooling_identity(bundle / "pki") == NODE_AGENT
    passwords = json.loads((bundle / "secrets" / "nats-passwords.json").read_text())
    assert passwords == {"messaging": "password-of-messaging", "gateway": "password-of-gateway"}


def test_a_new_bundle_takes_the_platform_certificate_an_older_one_left_on_the_host(pki: Pki, tmp_path: Path) -> None:
    data_dir = tmp_path / "host"
    (data_dir / "pki").mkdir(parents=True)
    for kind in ("crt", "key"):  # what a bundle made before the node-agent certificate held
        (data_dir / "pki" / f"{PLATFORM_USER}.{kind}").write_bytes(pki.identity(PLATFORM_USER).cert.read_bytes())
    _install(bundle_for(pki, tmp_path, ("messaging",)), data_dir)
    assert not (data_dir / "pki" / f"{PLATFORM_USER}.key").exists()
    assert tooling_identity(data_dir / "pki") == NODE_AGENT
