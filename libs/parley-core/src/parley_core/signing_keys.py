"""Ed25519 private keys kept in owner-only files: the audit chain's, reports' and backups'
signing keys are each made on first use and never replaced."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from parley_core.files import create_private_file, ensure_private_dir


def create_ed25519_key_file(path: Path) -> bool:
    """A new key (PKCS#8 PEM) at `path` unless one is there; True when this call made it (of
    several processes starting at once, one does)."""
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    ensure_private_dir(path.parent)
    return create_private_file(path, pem)


def load_or_create_ed25519_key(path: Path) -> Ed25519PrivateKey:
    """The key at `path`, made on first use; ValueError when the file holds anything else."""
    if not path.exists():
        create_ed25519_key_file(path)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return key
