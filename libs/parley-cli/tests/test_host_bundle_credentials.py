"""What a joined host's bundle hands its node agent: a node-agent certificate (never the platform
identity's, which administers the platform) and no NATS user of its own; what it reaches with
that certificate is libs/parley-agent/tests/test_agent_credential.py. Joining again with a new
bundle leaves the host's folder with that bundle's secrets and no other, or, when the join fails,
with the last one's."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import pytest

from parley_auth.key_files import AUDIT_KEY_FILE, SIGNING_KEY_FILE, successor_key_file
from parley_cli.host_bundle import SERVICE_SECRETS, BundleRefused, make_bundle, read_bundle
from parley_cli.hosts import JOINING, _install, cmd_host_add
from parley_cli.platform_nats import STORE_KEY_FILE
from parley_core.contracts import AUTH_SEALING_KEY_FILE
from parley_core.database import DATABASE_URL_FILE
from parley_core.pki import CA_NAME, Pki, ensure_pki, tooling_identity
from parley_core.topology import NATS_IDENTITY, NODE_AGENT, PLATFORM_USER, SERVICES
from parley_storage.key_files import BACKUP_KEY_FILES

AUTH_KEYS = {AUTH_SEALING_KEY_FILE, AUDIT_KEY_FILE, SIGNING_KEY_FILE}


def bundle_for(
    pki: Pki,
    tmp_path: Path,
    services: tuple[str, ...],
    *,
    out: str = "bundle",
    nats_node: dict[str, Any] | None = None,
) -> Path:
    state = {
        "running": True,
        "nats_url": "tls://127.0.0.1:4999",
        "services": {name: {"address": f"127.0.0.1:{5000 + n}"} for n, name in enumerate(SERVICES)},
    }
    secrets = tmp_path / "secrets"  # the first host's: auth's keys, as auth made them there
    secrets.mkdir(exist_ok=True)
    for name in SERVICE_SECRETS["auth"]:
        (secrets / name).write_bytes(f"first host's {name}".encode())
    out = tmp_path / out
    make_bundle(
        state=state,
        pki=pki,
        passwords={name: f"password-of-{name}" for name in (*SERVICES, PLATFORM_USER)},
        host="host-b",
        services=services,
        out=out,
        secrets=secrets,
        nats_node=nats_node,
    )
    return out


def join(bundle: Path, data_dir: Path) -> None:
    _install(bundle, data_dir, read_bundle(bundle))


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


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
    join(bundle_for(pki, tmp_path, ("messaging",)), data_dir)
    assert not (data_dir / "pki" / f"{PLATFORM_USER}.key").exists()
    assert tooling_identity(data_dir / "pki") == NODE_AGENT


def test_joining_again_without_auth_removes_auths_keys_and_certificates(pki: Pki, tmp_path: Path) -> None:
    data_dir = tmp_path / "host"
    join(bundle_for(pki, tmp_path, ("messaging", "gateway", "auth"), out="b1"), data_dir)
    assert {p.name for p in (data_dir / "secrets").iterdir()} >= AUTH_KEYS
    (data_dir / "secrets" / successor_key_file("k2")).write_bytes(b"a rotation's successor, made here")

    second = bundle_for(pki, tmp_path, ("messaging",), out="b2")
    join(second, data_dir)

    assert {p.name for p in (data_dir / "secrets").iterdir()} == {"nats-passwords.json"}
    assert files(data_dir / "pki") == files(second / "pki")  # no auth or gateway certificate
    assert json.loads((data_dir / "secrets" / "nats-passwords.json").read_text()) == {
        "messaging": "password-of-messaging"
    }
    assert not (data_dir / JOINING).exists()


def test_what_a_still_hosted_part_made_on_the_host_stays(pki: Pki, tmp_path: Path) -> None:
    """auth's successor keys from rotations and the NATS node's store key are in no bundle: the
    node's JetStream store would be unreadable without its key."""
    data_dir = tmp_path / "host"
    node = {"name": "node1", "routes": ["127.0.0.1:6001"]}
    join(bundle_for(pki, tmp_path, ("auth",), out="b1", nats_node=node), data_dir)
    made_here = {successor_key_file("k2"): b"successor", STORE_KEY_FILE: b"store key"}
    for name, data in made_here.items():
        (data_dir / "secrets" / name).write_bytes(data)

    join(bundle_for(pki, tmp_path, ("auth", "messaging"), out="b2", nats_node=node), data_dir)

    held = files(data_dir / "secrets")
    assert {name: held[name] for name in made_here} == made_here
    assert f"{NATS_IDENTITY}.key" in files(data_dir / "pki")


def test_a_join_that_fails_while_copying_leaves_the_last_joins_files(pki: Pki, tmp_path: Path) -> None:
    data_dir = tmp_path / "host"
    join(bundle_for(pki, tmp_path, ("messaging", "auth"), out="b1"), data_dir)
    before = files(data_dir)
    broken = bundle_for(pki, tmp_path, ("messaging",), out="b2")
    (broken / "secrets" / "unreadable").mkdir()  # reading it fails after the other files were copied

    with pytest.raises(BundleRefused, match="was not installed"):
        join(broken, data_dir)

    assert files(data_dir) == before
    assert not (data_dir / JOINING).exists()


def first_host(tmp_path: Path) -> Path:
    """A running platform's folder as `host add` reads it (this test's process stands in for
    `parley up`): its CA, NATS passwords, storage's database URL and backup keys."""
    data_dir = tmp_path / "first"
    ensure_pki(data_dir / "pki", [PLATFORM_USER])
    (data_dir / "secrets").mkdir()
    passwords = {name: f"password-of-{name}" for name in (*SERVICES, PLATFORM_USER)}
    (data_dir / "secrets" / "nats-passwords.json").write_text(json.dumps(passwords))
    for name in (DATABASE_URL_FILE.name, *BACKUP_KEY_FILES):
        (data_dir / "secrets" / name).write_text(name)
    doors = {name: {"address": f"127.0.0.1:{5000 + n}"} for n, name in enumerate(SERVICES)}
    state = {"running": True, "pid": os.getpid(), "nats_url": "tls://127.0.0.1:4999", "services": doors}
    (data_dir / "platform.json").write_text(json.dumps(state))
    return data_dir


@pytest.mark.parametrize(
    ("services", "options"),
    [
        ("messaging", ""),
        ("patch-registry", " --registry-folder FOLDER (FOLDER is this host's {first}/patch-registry, {shared})"),
        ("storage", " --storage-keyring KEYRING (KEYRING is this host's {first}/secrets/storage-kek.json, {shared})"),
    ],
)
async def test_host_add_prints_the_join_command_that_bundle_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], services: str, options: str
) -> None:
    """`host join` refuses the registry without --registry-folder and storage without --storage-keyring."""
    data_dir, out = first_host(tmp_path), tmp_path / "bundle"
    args = argparse.Namespace(name="host-c", services=services, nats_node=False, data_dir=data_dir, out=out, address="")

    assert await cmd_host_add(args) == 0

    command = capsys.readouterr().out.strip().split("run there: ")[-1]
    tail = options.format(first=data_dir.resolve(), shared="on a file system both hosts share")
    assert command == f"parley --data-dir DIR host join {out}{tail}"
