"""The registry's private signing keys on disk, and publishers' public keys as TUF keys."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key
from securesystemslib.signer import CryptoSigner, Key, SSlibKey

from parley_core.errors import InvalidArgument, NotFound
from parley_core.files import ensure_private_dir


class KeyStore:
    """PEM private keys in a folder (0600), one file per key: `<role>.<n>.pem`.

    The root keys are written under `offline/` so an operator can move them to removable media;
    the registry never needs them except to rotate keys.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, role: str, index: int) -> Path:
        sub = "offline/" if role == "root" else ""
        return self.folder / f"{sub}{role}.{index}.pem"

    def make_private(self) -> None:
        """The key folder and every folder in it owner-only (0700), also when an older version
        made them readable by others."""
        ensure_private_dir(self.folder)
        for folder in [p for p in self.folder.rglob("*") if p.is_dir() and not p.is_symlink()]:
            ensure_private_dir(folder)

    def generate(self, role: str, index: int = 0) -> CryptoSigner:
        signer = CryptoSigner.generate_ed25519()
        path = self._path(role, index)
        ensure_private_dir(self.folder)
        ensure_private_dir(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(signer.private_bytes)
        return signer

    def remove(self, role: str, index: int = 0) -> None:
        self._path(role, index).unlink(missing_ok=True)

    def load(self, role: str, index: int = 0) -> CryptoSigner:
        path = self._path(role, index)
        if not path.exists():
            raise NotFound(f"no signing key for role {role!r} at {path}")
        key = load_pem_private_key(path.read_bytes(), password=None)
        return CryptoSigner(key)


def parse_public_key(pem: str) -> Key:
    """A publisher's Ed25519 public key (SubjectPublicKeyInfo PEM) as a TUF key, id computed here."""
    try:
        public = load_pem_public_key(pem.encode())
    except ValueError as error:
        raise InvalidArgument(f"public_key_pem is not a PEM public key: {error}") from None
    if not isinstance(public, Ed25519PublicKey):
        raise InvalidArgument(f"publisher keys are Ed25519, not {type(public).__name__}")
    return SSlibKey.from_crypto(public)
