"""`parley kubernetes secrets`: the Secrets deploy/kubernetes mounts, made from a real data folder.

The data folder's CA is made by `parley up`'s own PKI helper (ensure_pki). The Secrets must be
valid Kubernetes objects, be the ones (and carry the keys) the base's manifests refer to, carry
certificates that chain to the platform CA and name the Services' DNS names, a nats-server
configuration the real nats-server accepts, auth's and storage's keys as the data folder holds
them (a pod's init container puts them where the services open them), and never the CA's private
key.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import nats.errors
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from parley_auth.audit_key import AuditSigner
from parley_auth.key_files import AUDIT_KEY_FILE
from parley_auth.key_files import SIGNING_KEY_FILE as AUTH_SIGNING_KEY_FILE
from parley_auth.sealing import SecretSealer
from parley_auth.signing import TokenIssuer
from parley_cli.kubernetes_secrets import SERVICE_KEYS, dns_names, nats_dns_names
from parley_cli.main import main
from parley_core.contracts import AUTH_SEALING_KEY_FILE
from parley_core.nats_connect import connect_nats_once
from parley_core.nats_process import NatsServerProcess
from parley_core.natsconf import nats_server_binary
from parley_core.net import free_port
from parley_core.pki import CA_NAME, Pki, ensure_pki
from parley_core.topology import NATS_IDENTITY, PLATFORM_USER, SERVICES
from parley_storage.backup_keys import BackupKeys
from parley_storage.kek import FileKeyring, data_key_context
from parley_storage.key_files import BACKUP_KEY_FILES, KEYRING_FILE

BASE = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "base"
KUBERNETES_VERSION = "1.32.0"
NAMESPACE = "parley-example"
PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S)


def platform_folder(tmp_path: Path) -> Path:
    """A data folder as `parley up` leaves it: the CA, and the keys auth and storage made on their
    first start (with the services' own functions)."""
    data_dir = tmp_path / "platform"
    ensure_pki(data_dir / "pki", [*SERVICES, NATS_IDENTITY, PLATFORM_USER])
    secrets = data_dir / "secrets"
    SecretSealer.load_or_create(secrets / AUTH_SEALING_KEY_FILE)
    AuditSigner.load_or_create(secrets / AUDIT_KEY_FILE)
    TokenIssuer.load_or_create(secrets / AUTH_SIGNING_KEY_FILE)
    FileKeyring.load_or_create(secrets / KEYRING_FILE)
    BackupKeys.load_or_create(secrets)
    return data_dir


def files_of(o: dict[str, Any]) -> dict[str, bytes]:
    """A Secret's files as a pod's volume holds them."""
    text = {k: v.encode() for k, v in o.get("stringData", {}).items()}
    return {**text, **{k: base64.b64decode(v) for k, v in o.get("data", {}).items()}}


def run_parley(*argv: str) -> int:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    return int(exited.value.code or 0)


def make(data_dir: Path, out: Path, *extra: str) -> dict[str, dict[str, Any]]:
    code = run_parley(
        "--data-dir", str(data_dir), "kubernetes", "secrets", "--namespace", NAMESPACE, "--out", str(out), *extra
    )
    assert code == 0
    objects = [yaml.safe_load(path.read_text()) for path in sorted(out.iterdir())]
    return {o["metadata"]["name"]: o for o in objects}


def referred_secrets() -> dict[str, set[str]]:
    """Every Secret the base's manifests mount or read, with the keys they read from it."""
    referred: dict[str, set[str]] = {}
    for path in BASE.glob("*.yaml"):
        for o in yaml.safe_load_all(path.read_text()):
            if not o or o["kind"] not in {"Deployment", "StatefulSet"}:
                continue
            spec = o["spec"]["template"]["spec"]
            for volume in spec.get("volumes", []):
                if "secret" in volume:
                    referred.setdefault(volume["secret"]["secretName"], set())
                for source in volume.get("projected", {}).get("sources", []):
                    referred.setdefault(source["secret"]["name"], set())
            for container in [*spec.get("initContainers", []), *spec["containers"]]:
                for env in container.get("env", []):
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        referred.setdefault(ref["name"], set()).add(ref["key"])
    return referred


def test_the_secrets_are_valid_and_are_those_the_manifests_refer_to(tmp_path: Path) -> None:
    secrets = make(platform_folder(tmp_path), tmp_path / "out")
    for name, o in secrets.items():
        kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)
        assert o["metadata"]["namespace"] == NAMESPACE, name
    referred = referred_secrets()
    assert referred.keys() <= secrets.keys()
    for name, keys in referred.items():
        assert keys <= files_of(secrets[name]).keys(), name
    assert {"parley-auth-keys", "parley-storage-keys"} <= referred.keys()
    # No pod runs as the platform: its all-powerful NATS user and certificate stay out of the cluster.
    assert not {"parley-pki-platform", "parley-nats-platform"} & secrets.keys()
    for service in SERVICES:  # what the runner reads from the mounted pki/ and secrets/
        assert set(secrets[f"parley-pki-{service}"]["stringData"]) == {"ca.crt", f"{service}.crt", f"{service}.key"}
        passwords = yaml.safe_load(secrets[f"parley-nats-{service}"]["stringData"]["nats-passwords.json"])
        assert list(passwords) == [service]  # its own password, nobody else's
    assert (tmp_path / "out").stat().st_mode & 0o077 == 0
    assert set(files_of(secrets["parley-auth-keys"])) == {AUTH_SEALING_KEY_FILE, AUDIT_KEY_FILE, AUTH_SIGNING_KEY_FILE}
    assert set(files_of(secrets["parley-storage-keys"])) == {KEYRING_FILE, *BACKUP_KEY_FILES}


def test_every_volume_a_pod_mounts_is_a_secret_made_here_a_claim_or_its_own(tmp_path: Path) -> None:
    secrets = make(platform_folder(tmp_path), tmp_path / "out")
    objects = [o for path in BASE.glob("*.yaml") for o in yaml.safe_load_all(path.read_text()) if o]
    claims = {o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"}
    for o in objects:
        if o["kind"] not in {"Deployment", "StatefulSet"}:
            continue
        spec = o["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        own = {c["metadata"]["name"] for c in o["spec"].get("volumeClaimTemplates", [])}
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            for mount in container.get("volumeMounts", []):
                where = f"{o['metadata']['name']}/{container['name']}: {mount['name']}"
                if mount["name"] in own:
                    continue
                volume = volumes[mount["name"]]
                if "secret" in volume:
                    assert volume["secret"]["secretName"] in secrets, where
                elif "projected" in volume:
                    assert {s["secret"]["name"] for s in volume["projected"]["sources"]} <= secrets.keys(), where
                elif "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in claims, where
                else:
                    assert set(volume) == {"name", "emptyDir"}, where


def seed_pod_volume(secrets: dict[str, dict[str, Any]], service: str, tmp_path: Path) -> Path:
    """The service's state folder as its init container leaves it on the volume, from its projected
    Secrets (its NATS password and its keys), run as the manifest runs it, with this test's paths."""
    spec = next(
        o["spec"]["template"]["spec"]
        for o in yaml.safe_load_all((BASE / "services.yaml").read_text())
        if o and o["kind"] == "Deployment" and o["metadata"]["name"] == service
    )
    seed = tmp_path / f"{service}-seed"
    seed.mkdir(exist_ok=True)
    (seed_volume,) = (v for v in spec["volumes"] if v["name"] == "seed")
    for source in seed_volume["projected"]["sources"]:
        for name, content in files_of(secrets[source["secret"]["name"]]).items():
            (seed / name).write_bytes(content)
    (init,) = spec["initContainers"]
    state = tmp_path / f"{service}-volume"
    command = [sys.executable, *init["command"][1:]]
    command = [part.replace("/seed", str(seed)).replace("/state", str(state)) for part in command]
    state.mkdir(exist_ok=True)
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    return state / "secrets"


def test_the_keys_a_pod_finds_are_the_data_folders(tmp_path: Path) -> None:
    """Auth's sealing key opens what the data folder's sealed, its audit and token keys are the same
    keys; storage's keyring unwraps what the data folder's wrapped and its backup keys load; a
    restart keeps the keys the service changed, and takes the Secret's NATS password."""
    data_dir = platform_folder(tmp_path)
    secrets = make(data_dir, tmp_path / "out")
    here = data_dir / "secrets"
    sealed = SecretSealer.load_or_create(here / AUTH_SEALING_KEY_FILE).seal(b"totp secret", "u1")
    wrapped = FileKeyring.load_or_create(here / KEYRING_FILE).wrap_and_keep("dk1", "u1", b"k" * 32)

    auth = seed_pod_volume(secrets, "auth", tmp_path)
    assert SecretSealer.load_or_create(auth / AUTH_SEALING_KEY_FILE).open(sealed, "u1") == b"totp secret"
    for name in (AUDIT_KEY_FILE, AUTH_SIGNING_KEY_FILE):
        assert (auth / name).read_bytes() == (here / name).read_bytes()
    pod_audit = AuditSigner.load_or_create(auth / AUDIT_KEY_FILE)
    assert pod_audit.public_key == AuditSigner.load_or_create(here / AUDIT_KEY_FILE).public_key
    assert json.loads((auth / "nats-passwords.json").read_text()).keys() == {"auth"}
    assert {p.name for p in auth.iterdir()} == {*SERVICE_KEYS["auth"], "nats-passwords.json"}
    assert auth.stat().st_mode & 0o777 == 0o700

    storage = seed_pod_volume(secrets, "storage", tmp_path)
    keyring = FileKeyring.load_or_create(storage / KEYRING_FILE)
    context = data_key_context("dk1", "u1")
    assert keyring.unwrap(wrapped.kek_id, wrapped.wrapped, context=context) == b"k" * 32
    BackupKeys.load(storage)
    assert (tmp_path / "storage-volume" / "audit-checkpoints").is_dir()

    # The pod's restart: the keyring it rotated stays, the NATS password is the Secret's again.
    keyring.rotate()
    rotated = (storage / KEYRING_FILE).read_bytes()
    (storage / "nats-passwords.json").write_text("{}")
    assert seed_pod_volume(secrets, "storage", tmp_path) == storage
    assert (storage / KEYRING_FILE).read_bytes() == rotated
    assert json.loads((storage / "nats-passwords.json").read_text()).keys() == {"storage"}
    assert os.stat(storage / KEYRING_FILE).st_mode & 0o077 == 0


def test_certificates_chain_to_the_ca_and_name_the_services(tmp_path: Path) -> None:
    data_dir = platform_folder(tmp_path)
    secrets = make(data_dir, tmp_path / "out")
    ca = x509.load_pem_x509_certificate((data_dir / "pki" / "ca.crt").read_bytes())
    expected = {service: dns_names(service, NAMESPACE) for service in SERVICES}
    expected[NATS_IDENTITY] = nats_dns_names(NAMESPACE)
    assert "nats-2.nats.parley-example.svc.cluster.local" in expected[NATS_IDENTITY]
    for identity, names in expected.items():
        data = secrets["parley-nats-server" if identity == NATS_IDENTITY else f"parley-pki-{identity}"]["stringData"]
        assert x509.load_pem_x509_certificate(data["ca.crt"].encode()) == ca
        cert = x509.load_pem_x509_certificate(data[f"{identity}.crt"].encode())
        cert.verify_directly_issued_by(ca)
        named = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(names) <= set(named.get_values_for_type(x509.DNSName)), identity
    assert set(dns_names("auth", NAMESPACE)) == {
        "auth",
        "auth.parley-example",
        "auth.parley-example.svc",
        "auth.parley-example.svc.cluster.local",
    }


def test_no_private_key_of_the_ca_is_in_the_output(tmp_path: Path) -> None:
    data_dir = platform_folder(tmp_path)
    out = tmp_path / "out"
    make(data_dir, out)
    ca_key = (data_dir / "pki" / "ca.key").read_bytes()
    ca_public = Pki(directory=data_dir / "pki", ca_cert=data_dir / "pki" / "ca.crt").identity(CA_NAME)
    ca_public_key = x509.load_pem_x509_certificate(ca_public.cert.read_bytes()).public_key()
    keys_seen = 0
    for path in out.iterdir():
        for value in files_of(yaml.safe_load(path.read_text())).values():
            assert ca_key.strip() not in value
            for pem in PRIVATE_KEY.findall(value):
                keys_seen += 1
                assert serialization.load_pem_private_key(pem, password=None).public_key() != ca_public_key
    # each service's and nats'; auth's audit and token keys, storage's backup signing key
    assert keys_seen == len(SERVICES) + 1 + 3


def mount_nats_secret(files: dict[str, str], tmp_path: Path, moved: dict[str, str] | None = None) -> Path:
    """The Secret's files in a folder, as the StatefulSet mounts them at /etc/nats with its store at
    /data/jetstream: those paths (and, `moved`, other text such as ports) replaced by this test's."""
    mounted = tmp_path / "etc-nats"
    mounted.mkdir()
    replaced = {"/etc/nats/": f"{mounted}/", "/data/jetstream": str(tmp_path / "js"), **(moved or {})}
    for name, text in files.items():
        content = text
        for old, new in replaced.items():
            content = content.replace(old, new)
        (mounted / name).write_text(content)
    return mounted


def nats_server_test(config: Path) -> subprocess.CompletedProcess[str]:
    """`nats-server -t`: loads the configuration (and the files it names) and exits."""
    command = [nats_server_binary(), "-t", "-c", str(config)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_nats_server_accepts_the_configuration(tmp_path: Path) -> None:
    secrets = make(platform_folder(tmp_path), tmp_path / "out")
    files = secrets["parley-nats-server"]["stringData"]
    # As the StatefulSet mounts them (nats.yaml): the Secret at /etc/nats, the store at /data/jetstream.
    nats_yaml = [o for o in yaml.safe_load_all((BASE / "nats.yaml").read_text()) if o and o["kind"] == "StatefulSet"]
    container = nats_yaml[0]["spec"]["template"]["spec"]["containers"][0]
    assert "/etc/nats/nats-server.conf" in container["args"]
    assert {"name": "config", "mountPath": "/etc/nats", "readOnly": True} in container["volumeMounts"]
    config = files["nats-server.conf"]
    assert "nats-route://" in config
    assert "nats-1.nats.parley-example.svc:6222" in config
    mounted = mount_nats_secret(files, tmp_path)
    checked = nats_server_test(mounted / "nats-server.conf")
    assert checked.returncode == 0, checked.stderr + checked.stdout
    # The check reads the certificates: without the key it refuses, so the success above means something.
    (mounted / "nats.key").unlink()
    assert nats_server_test(mounted / "nats-server.conf").returncode != 0


async def test_a_service_logs_into_the_server_with_its_own_secret(tmp_path: Path) -> None:
    """The server started from parley-nats-server (ports moved to free ones) lets messaging in with
    the password and CA of its own Secrets, and refuses another service's name with that password."""
    secrets = await asyncio.to_thread(make, platform_folder(tmp_path), tmp_path / "out")  # the CLI runs its own loop
    port = free_port("127.0.0.1")
    moved = {"port: 4222": f"port: {port}", "port: 6222": f"port: {free_port('127.0.0.1')}"}
    mounted = mount_nats_secret(secrets["parley-nats-server"]["stringData"], tmp_path, moved)
    pod = tmp_path / "pod-pki"
    pod.mkdir()
    (pod / "ca.crt").write_text(secrets["parley-pki-messaging"]["stringData"]["ca.crt"])
    (password,) = json.loads(secrets["parley-nats-messaging"]["stringData"]["nats-passwords.json"]).values()
    server = NatsServerProcess(
        config_path=mounted / "nats-server.conf", host="127.0.0.1", port=port, log_path=tmp_path / "nats.log"
    )
    await server.start()
    try:
        client = await connect_nats_once(
            url=server.url, user="messaging", password=password, ca_cert=pod / "ca.crt", name="test"
        )
        assert client.is_connected
        await client.close()
        with pytest.raises(nats.errors.Error):
            await connect_nats_once(url=server.url, user="auth", password=password, ca_cert=pod / "ca.crt", name="test")
    finally:
        await server.stop()


def test_a_second_run_keeps_the_passwords_and_the_database_url(tmp_path: Path) -> None:
    data_dir = platform_folder(tmp_path)
    first = make(data_dir, tmp_path / "one")
    second = make(data_dir, tmp_path / "two")
    for name in ("parley-database", "parley-nats-messaging"):
        assert first[name]["stringData"] == second[name]["stringData"]
    database = first["parley-database"]["stringData"]
    assert database["url"].startswith("postgresql://postgres:")
    assert database["url"].endswith("@postgres:5432/parley")
    assert database["password"]
    assert database["password"] in database["url"]
    given = make(data_dir, tmp_path / "three", "--database-url", "postgresql://parley:pw@db.example:5432/parley")
    assert given["parley-database"]["stringData"] == {
        "url": "postgresql://parley:pw@db.example:5432/parley",
        "password": "pw",
    }


def test_refusals_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = platform_folder(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    assert (
        run_parley("--data-dir", str(data_dir), "kubernetes", "secrets", "--namespace", NAMESPACE, "--out", str(out))
        == 2
    )
    assert "exists" in capsys.readouterr().err
    assert not any(out.iterdir())
    joined = tmp_path / "joined"  # a host's folder: the CA's certificate, not its key
    (joined / "pki").mkdir(parents=True)
    (joined / "pki" / "ca.crt").write_bytes((data_dir / "pki" / "ca.crt").read_bytes())
    fresh = tmp_path / "fresh"
    assert (
        run_parley("--data-dir", str(joined), "kubernetes", "secrets", "--namespace", NAMESPACE, "--out", str(fresh))
        == 2
    )
    assert "no platform CA key" in capsys.readouterr().err
    assert not fresh.exists()
    assert (
        run_parley("--data-dir", str(data_dir), "kubernetes", "secrets", "--namespace", "Bad_NS", "--out", str(fresh))
        == 2
    )
    assert "no namespace" in capsys.readouterr().err
    assert not fresh.exists()
    keyless = tmp_path / "keyless"  # the CA, but auth and storage never started there
    ensure_pki(keyless / "pki", [*SERVICES, NATS_IDENTITY, PLATFORM_USER])
    assert (
        run_parley("--data-dir", str(keyless), "kubernetes", "secrets", "--namespace", NAMESPACE, "--out", str(fresh))
        == 2
    )
    assert f"lacks {AUTH_SEALING_KEY_FILE}" in capsys.readouterr().err
    assert not fresh.exists()
    url = ("--database-url", "sqlite:///archive.db")
    assert (
        run_parley(
            "--data-dir", str(data_dir), "kubernetes", "secrets", "--namespace", NAMESPACE, "--out", str(fresh), *url
        )
        == 2
    )
    assert "PostgreSQL" in capsys.readouterr().err
    assert not fresh.exists()
