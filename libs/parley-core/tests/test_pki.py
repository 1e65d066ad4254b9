"""The local CA: created once, kept across starts, and accepted by TLS peers."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from parley_core.pki import CA_COMMON_NAME, CertificateMissing, _issue_leaf, _store, ensure_pki, issue_into

NAMES = ["auth", "nats"]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_creates_ca_and_certs_with_private_permissions(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path / "pki", NAMES)

    assert _mode(pki.directory) == 0o700
    assert _mode(pki.identity("ca").key) == 0o600
    for name in NAMES:
        assert _mode(pki.identity(name).key) == 0o600
    ca = x509.load_pem_x509_certificate(pki.ca_pem())
    assert ca.subject.rfc4514_string() == f"CN={CA_COMMON_NAME}"
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)


def test_second_call_leaves_files_byte_identical(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    ensure_pki(directory, NAMES)
    before = _snapshot(directory)

    ensure_pki(directory, NAMES)

    assert _snapshot(directory) == before


def test_second_call_adds_only_missing_identities(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    ensure_pki(directory, NAMES)
    before = _snapshot(directory)

    pki = ensure_pki(directory, [*NAMES, "storage"])

    after = _snapshot(directory)
    assert {k: after[k] for k in before} == before
    assert pki.identity("storage").cert.exists()
    assert _mode(pki.identity("storage").key) == 0o600


def test_cert_is_issued_by_ca_for_localhost(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path / "pki", NAMES)
    ca = x509.load_pem_x509_certificate(pki.ca_pem())
    cert_pem, _ = pki.read("nats")
    cert = x509.load_pem_x509_certificate(cert_pem)

    cert.verify_directly_issued_by(ca)

    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "nats"} <= set(san.get_values_for_type(x509.DNSName))
    assert {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")} <= set(
        san.get_values_for_type(x509.IPAddress)
    )
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(eku)
    assert cert.subject.rfc4514_string() == "CN=nats"


def test_reissues_certs_signed_by_a_replaced_ca(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    pki = ensure_pki(directory, NAMES)
    old_cert = pki.read("auth")[0]
    pki.identity("ca").cert.unlink()

    pki = ensure_pki(directory, NAMES)

    new_ca = x509.load_pem_x509_certificate(pki.ca_pem())
    new_cert = x509.load_pem_x509_certificate(pki.read("auth")[0])
    assert pki.read("auth")[0] != old_cert
    new_cert.verify_directly_issued_by(new_ca)


def test_reissues_cert_expiring_within_30_days(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    pki = ensure_pki(directory, NAMES)
    ca_pem, ca_key_pem = pki.read("ca")
    ca = x509.load_pem_x509_certificate(ca_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    # Issued 340 days ago with a one-year validity: 25 days left.
    cert, key = _issue_leaf("auth", ca, ca_key, dt.datetime.now(dt.UTC) - dt.timedelta(days=340))
    _store(pki.identity("auth"), cert, key)
    other_before = pki.read("nats")

    pki = ensure_pki(directory, NAMES)

    renewed = x509.load_pem_x509_certificate(pki.read("auth")[0])
    assert renewed.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=300)
    assert pki.read("nats") == other_before


def test_a_host_gets_certificates_from_the_ca_without_its_key(tmp_path: Path) -> None:
    operator = ensure_pki(tmp_path / "operator", [])
    host = issue_into(operator, ["messaging"], tmp_path / "host")
    assert not (tmp_path / "host" / "ca.key").exists()
    assert host.ca_pem() == operator.ca_pem()
    cert = x509.load_pem_x509_certificate(host.identity("messaging").cert.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(operator.ca_pem()))
    assert _mode(host.identity("messaging").key) == 0o600


def test_a_host_folder_checks_its_certificates_and_never_makes_a_ca(tmp_path: Path) -> None:
    operator = ensure_pki(tmp_path / "operator", [])
    issue_into(operator, ["messaging"], tmp_path / "host")
    before = _snapshot(tmp_path / "host")
    ensure_pki(tmp_path / "host", ["messaging"])  # what a service does at start on the host
    assert _snapshot(tmp_path / "host") == before
    with pytest.raises(CertificateMissing, match="parley host add"):
        ensure_pki(tmp_path / "host", ["gateway"])  # not issued to this host
    assert _snapshot(tmp_path / "host") == before


def test_a_pods_read_only_certificate_folder_is_checked_without_writing(tmp_path: Path) -> None:
    """On Kubernetes the folder is a read-only Secret volume (parley-pki-<service>): the service's
    start checks its certificates there and writes nothing, not even the folder's mode. A read-only
    bind mount in a mount namespace of its own stands in for the volume (root and unshare needed)."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("a read-only mount needs root and unshare")
    platform = ensure_pki(tmp_path / "platform", ["messaging"])
    pod = issue_into(platform, ["messaging"], tmp_path / "pod")
    check = (
        "from pathlib import Path; from parley_core.pki import ensure_pki; "
        f"ensure_pki(Path({str(pod.directory)!r}), ['messaging'])"
    )
    mount = f"mount --bind {pod.directory} {pod.directory} && mount -o remount,bind,ro {pod.directory}"
    done = subprocess.run(
        [unshare, "-m", "sh", "-c", f'{mount} && exec "$0" -c "$1"', sys.executable, check],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
