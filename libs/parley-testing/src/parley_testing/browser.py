"""Debian's Chromium for browser tests: trusting exactly the gateway's key, as a user's browser
trusts the platform's CA once it is imported."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

CHROMIUM = Path("/usr/bin/chromium")


def spki_pin(cert_path: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of a certificate, for Chromium's pin list."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def chromium_args(gateway_cert: Path) -> list[str]:
    return [
        f"--ignore-certificate-errors-spki-list={spki_pin(gateway_cert)}",
        "--no-sandbox",
        "--disable-dev-shm-usage",
    ]
