"""The backup secrets in the data folder's secrets/ (0600): the key that wraps each backup's
content key, and the Ed25519 pair that signs and verifies its manifest."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from parley_core.files import create_private_file, ensure_private_dir, write_private_file
from parley_core.signing_keys import create_ed25519_key_file
from parley_storage.key_files import BACKUP_KEY_FILE, SIGNING_KEY_FILE, VERIFY_KEY_FILE

T = TypeVar("T")


class BackupInvalid(Exception):
    """The backup is damaged, tampered with, or not signed by this installation's key."""


@dataclass(frozen=True)
class BackupKeys:
    """Backup secrets in the data folder's secrets/ (0600): content-wrapping key and signing key."""

    wrapping_key: bytes
    signing_key: Ed25519PrivateKey | None
    verify_key: Ed25519PublicKey
    secrets_dir: Path = Path("secrets")  # where they were read, for messages

    @classmethod
    def load_or_create(cls, secrets_dir: Path) -> BackupKeys:
        cls.create_missing(secrets_dir)
        return cls.load(secrets_dir)

    @staticmethod
    def create_missing(secrets_dir: Path) -> None:
        """Make whichever backup secret is missing: storage does at its first start, so a key backup
        taken at install time holds them. Safe when two instances start at once: the wrapping and
        signing keys are only ever created, never replaced, and the public key is derived from the
        signing key on disk (again when a signing key was just made: a folder restored without it)."""
        ensure_private_dir(secrets_dir)
        key_path, signing_path = secrets_dir / BACKUP_KEY_FILE, secrets_dir / SIGNING_KEY_FILE
        if not key_path.exists():
            create_private_file(key_path, base64.b64encode(AESGCM.generate_key(bit_length=256)) + b"\n")
        made_signing_key = not signing_path.exists() and create_ed25519_key_file(signing_path)
        if made_signing_key or not (secrets_dir / VERIFY_KEY_FILE).exists():
            signing = serialization.load_pem_private_key(signing_path.read_bytes(), password=None)
            public = signing.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            write_private_file(secrets_dir / VERIFY_KEY_FILE, public)

    def require_signing_key(self) -> Ed25519PrivateKey:
        if self.signing_key is None:
            raise BackupInvalid(
                f"backup signing key missing: {self.secrets_dir / SIGNING_KEY_FILE} (copy it from your key backup; "
                "a new pair would leave older backups verifiable only with the key backup's .pub)"
            )
        return self.signing_key

    @classmethod
    def load(cls, secrets_dir: Path) -> BackupKeys:
        wrapping = _read_key(secrets_dir / BACKUP_KEY_FILE, base64.b64decode)
        verify = _read_key(secrets_dir / VERIFY_KEY_FILE, serialization.load_pem_public_key)
        if not isinstance(verify, Ed25519PublicKey) or len(wrapping) != 32:
            raise BackupInvalid(f"backup keys in {secrets_dir} are not an AES-256 key and an Ed25519 public key")
        signing: Ed25519PrivateKey | None = None
        if (secrets_dir / SIGNING_KEY_FILE).exists():
            loaded = _read_key(
                secrets_dir / SIGNING_KEY_FILE, lambda pem: serialization.load_pem_private_key(pem, password=None)
            )
            if not isinstance(loaded, Ed25519PrivateKey):
                raise BackupInvalid(f"{SIGNING_KEY_FILE} is not an Ed25519 private key")
            signing = loaded
        return cls(wrapping_key=wrapping, signing_key=signing, verify_key=verify, secrets_dir=secrets_dir)


def _read_key(path: Path, parse: Callable[[bytes], T]) -> T:
    """One of the backup secrets, parsed; a missing or damaged one is named (not a parser's traceback)."""
    try:
        return parse(path.read_bytes())
    except FileNotFoundError as exc:
        raise BackupInvalid(f"backup key missing: {path} (copy it from your key backup)") from exc
    except (ValueError, TypeError) as exc:  # not base64, not PEM, a PEM key with a password
        raise BackupInvalid(f"{path} is not a readable backup key: copy it again from your key backup") from exc
