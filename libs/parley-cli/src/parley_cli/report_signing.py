"""The compliance report's signature: Ed25519 (`cryptography`) over the report's bytes.

The key signs reports and nothing else, so its loss forges no token, release or audit record. It
is kept in the data folder's secrets/ (0600), made on first use; its public half is written
beside every report, where an auditor takes it (or, better, compares its fingerprint with the one
the operator handed over once) to check the report with `parley report verify`.

The signature is the report's last line, a Markdown and HTML comment (invisible when rendered),
so one file carries both; it covers every byte before that line. A PDF report carries it after
its %%EOF, where PDF readers look no further.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from parley_core.signing_keys import load_or_create_ed25519_key

SIGNING_KEY_FILE = Path("secrets") / "report-signing-key.pem"
PUBLIC_KEY_NAME = "parley-report-key.pub.pem"  # written beside each report
TRAILER_START = b"<!-- parley-report-signature "
_TRAILER = re.compile(
    rb"<!-- parley-report-signature ed25519 key-id=([0-9a-f]{16}) signature=([A-Za-z0-9+/=]+) -->\n\Z"
)


class ReportNotVerified(Exception):
    """The report is not what the key signed (or carries no signature); the message says which."""


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_or_create_signing_key(data_dir: Path) -> Ed25519PrivateKey:
    """The platform's report-signing key, made on first use (of two runs at once, the first one's)."""
    path = data_dir / SIGNING_KEY_FILE
    try:
        return load_or_create_ed25519_key(path)
    except ValueError as exc:
        raise ReportNotVerified(str(exc)) from None


def signed(body: bytes, key: Ed25519PrivateKey) -> bytes:
    """`body` (ending in a newline) with its signature line appended."""
    if not body.endswith(b"\n"):
        body += b"\n"
    signature = base64.b64encode(key.sign(body)).decode()
    trailer = f"<!-- parley-report-signature ed25519 key-id={key_id(key.public_key())} signature={signature} -->\n"
    return body + trailer.encode()


@dataclass(frozen=True)
class Verified:
    key_id: str
    body: bytes


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise ReportNotVerified(f"cannot read the public key {path}: {exc.strerror}") from None
    except ValueError:
        raise ReportNotVerified(f"{path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ReportNotVerified(f"{path} is not an Ed25519 public key")
    return key


def verify(report: bytes, public_key: Ed25519PublicKey) -> Verified:
    """The signed body, when the last line is a valid signature over it by `public_key`."""
    start = report.rfind(TRAILER_START)
    if start < 0:
        raise ReportNotVerified("no signature line at its end: not a signed Parley report, or cut short")
    body, trailer = report[:start], report[start:]
    match = _TRAILER.match(trailer)
    if match is None:
        raise ReportNotVerified("its signature line is damaged")
    signer = match.group(1).decode()
    if signer != key_id(public_key):
        raise ReportNotVerified(
            f"signed by key {signer}, not by the public key given ({key_id(public_key)}): "
            "check the report with the key of the platform that wrote it"
        )
    try:
        public_key.verify(base64.b64decode(match.group(2), validate=True), body)
    except (InvalidSignature, binascii.Error):
        raise ReportNotVerified(
            f"TAMPERED: the report's content is not what key {signer} signed (changed after it was written)"
        ) from None
    return Verified(key_id=signer, body=body)
