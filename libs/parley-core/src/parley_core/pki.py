"""A local certificate authority and one certificate per identity (service, nats, platform).

Every NATS and gRPC connection inside Parley is TLS with certificates from this CA, so a local
platform needs no external PKI. ``ensure_pki`` is idempotent: a second platform start keeps the
existing files byte for byte and only repairs what is missing, expiring or signed by another CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from parley_core.files import ensure_private_dir, write_private_file
from parley_core.topology import NODE_AGENT, PLATFORM_USER

CA_NAME = "ca"
CA_COMMON_NAME = "Parley local CA"
CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=365)
RENEW_BEFORE = dt.timedelta(days=30)
# Backdate notBefore a little so a peer whose clock lags slightly still accepts a fresh cert.
_CLOCK_SKEW = dt.timedelta(minutes=5)
_LOOPBACK = {"127.0.0.1", "::1"}  # every leaf names these already


@dataclass(frozen=True)
class CertPaths:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    directory: Path
    ca_cert: Path

    def identity(self, name: str) -> CertPaths:
        """Where the certificate and key of ``name`` live (they may not exist yet)."""
        return CertPaths(cert=self.directory / f"{name}.crt", key=self.directory / f"{name}.key")

    def ca_pem(self) -> bytes:
        return self.ca_cert.read_bytes()

    def read(self, name: str) -> tuple[bytes, bytes]:
        """Return ``(cert_pem, key_pem)`` of ``name``, e.g. for ``grpc.ssl_server_credentials``."""
        paths = self.identity(name)
        return paths.cert.read_bytes(), paths.key.read_bytes()


class CertificateMissing(RuntimeError):
    """A host's folder (the CA's certificate, not its key) lacks a valid certificate it needs."""


def tooling_identity(directory: Path) -> str:
    """Whose certificate this folder's own tooling presents (its node agent, `parley status`,
    `fleet`, `patch`): a joined host's node-agent certificate where its bundle issued one (from
    `parley host add`), else the platform identity's (the first host; a host joined before)."""
    return NODE_AGENT if (directory / f"{NODE_AGENT}.crt").exists() else PLATFORM_USER


def ensure_pki(directory: Path, names: Iterable[str], addresses: Sequence[str] = ()) -> Pki:
    """Create or repair the CA and a certificate for each of ``names`` in ``directory``.

    Each leaf names localhost and loopback, and ``addresses`` (the host's own, `--host-address`):
    a leaf that lacks one of them is issued again.

    A folder with the CA's certificate but not its key is a host's that joined a fleet
    (`parley host join`): its certificates were issued by the operator, so they are checked, and
    one that is missing or expiring is an error naming the command that issues new ones.
    """
    pki = Pki(directory=directory, ca_cert=directory / f"{CA_NAME}.crt")
    now = dt.datetime.now(dt.UTC)
    ca_paths = pki.identity(CA_NAME)
    if ca_paths.cert.exists() and not ca_paths.key.exists():
        # Checked, never written: a pod's folder is a read-only Secret volume (deploy/kubernetes).
        _check_issued(pki, names, now)
        return pki
    ensure_private_dir(directory)
    loaded = _load_valid(ca_paths, now)
    if loaded is None:
        ca_cert, ca_key = _issue_ca(now)
        _store(ca_paths, ca_cert, ca_key)
    else:
        ca_cert, ca_key = loaded
    for name in dict.fromkeys(names):
        if name == CA_NAME:
            raise ValueError(f"identity name {CA_NAME!r} is reserved for the certificate authority")
        paths = pki.identity(name)
        leaf = _load_valid(paths, now)
        if leaf is None or not _issued_by(leaf[0], ca_cert) or not _names_addresses(leaf[0], addresses):
            cert, key = _issue_leaf(name, ca_cert, ca_key, now, addresses)
            _store(paths, cert, key)
    return pki


def _check_issued(pki: Pki, names: Iterable[str], now: dt.datetime) -> None:
    ca_cert = x509.load_pem_x509_certificate(pki.ca_pem())
    for name in dict.fromkeys(names):
        leaf = _load_valid(pki.identity(name), now)
        if leaf is None or not _issued_by(leaf[0], ca_cert):
            raise CertificateMissing(
                f"{pki.directory} has no valid certificate for {name!r} (missing, expiring or from another CA), "
                "and the CA's key stays with the operator: issue this host a new bundle with "
                "`parley host add HOST --services …` and join with it again"
            )


def issue_into(
    pki: Pki,
    names: Iterable[str],
    directory: Path,
    addresses: Sequence[str] = (),
    *,
    dns_names: Mapping[str, Sequence[str]] | None = None,
) -> Pki:
    """Certificates for ``names`` from this CA, written with the CA's certificate (never its key)
    into ``directory``: what a host that joins the fleet gets (naming ``addresses``, its own).
    ``dns_names`` adds host names to a name's certificate (a Kubernetes Service's DNS names)."""
    now = dt.datetime.now(dt.UTC)
    loaded = _load_valid(pki.identity(CA_NAME), now)
    if loaded is None:
        raise CertificateMissing(f"{pki.directory} holds no valid CA certificate and key to issue certificates with")
    ca_cert, ca_key = loaded
    ensure_private_dir(directory)
    issued = Pki(directory=directory, ca_cert=directory / f"{CA_NAME}.crt")
    write_private_file(issued.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    for name in dict.fromkeys(names):
        if name == CA_NAME:
            raise ValueError(f"identity name {CA_NAME!r} is reserved for the certificate authority")
        extra = (dns_names or {}).get(name, ())
        cert, key = _issue_leaf(name, ca_cert, ca_key, now, addresses, dns_names=extra)
        _store(issued.identity(name), cert, key)
    return issued


def _load_valid(paths: CertPaths, now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """Load a cert and its key, or None if either is missing, unreadable, mismatched or expiring."""
    try:
        cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
        key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    if cert.public_key() != key.public_key():
        return None
    if cert.not_valid_after_utc - RENEW_BEFORE <= now or cert.not_valid_before_utc > now + _CLOCK_SKEW:
        return None
    return cert, key


def _issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _certificate(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    *,
    now: dt.datetime,
    not_after: dt.datetime,
) -> x509.CertificateBuilder:
    """What every certificate here starts from: its names and key, a random serial number, and a
    start a little in the past, so a peer whose clock is slightly behind accepts it already."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
    )


def _key_usage(
    *, digital_signature: bool = False, key_agreement: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    """The uses named, and no other."""
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=key_agreement,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _issue_ca(now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME)])
    public_key = key.public_key()
    cert = (
        _certificate(subject, subject, public_key, now=now, not_after=now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _names_addresses(cert: x509.Certificate, addresses: Sequence[str]) -> bool:
    named = set(
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)
    )
    return all(ipaddress.ip_address(a) in named for a in addresses)


def _issue_leaf(
    name: str,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    now: dt.datetime,
    addresses: Sequence[str] = (),
    *,
    dns_names: Sequence[str] = (),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    public_key = key.public_key()
    san = x509.SubjectAlternativeName(
        [
            x509.DNSName("localhost"),
            *(x509.DNSName(n) for n in dict.fromkeys([name, *dns_names]) if n != "localhost"),
            x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
            x509.IPAddress(ipaddress.IPv6Address("::1")),
            *(x509.IPAddress(ipaddress.ip_address(a)) for a in dict.fromkeys(addresses) if a not in _LOOPBACK),
        ]
    )
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    not_after = min(now + LEAF_VALIDITY, ca_cert.not_valid_after_utc)
    cert = (
        _certificate(subject, ca_cert.subject, public_key, now=now, not_after=not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, key_agreement=True), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(san, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _store(paths: CertPaths, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    """Write the key before the cert so a crash between the two is detected as a mismatch."""
    key_pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    write_private_file(paths.key, key_pem)
    write_private_file(paths.cert, cert.public_bytes(serialization.Encoding.PEM))
