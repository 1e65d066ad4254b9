"""Key-encryption keys: what wraps the archive's data keys, and the hook for an external KMS.

Data keys live in the database, wrapped; the key-encryption key (KEK) never does. By default the
KEKs are a keyring file in the data folder's ``secrets/`` (0600, created on first start). An
operator with a KMS (Vault transit, AWS KMS, an HSM) implements ``KeyEncryptionKeys`` with the
KMS's wrap/unwrap calls and passes it to ``StorageApp``; nothing else changes, because the
archive only ever asks this interface to wrap or unwrap 32-byte data keys.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from parley_core.files import write_private_file

NONCE_BYTES = 12
KEY_BYTES = 32


class UnknownKek(Exception):
    """A data key names a KEK this keyring does not hold (retired too early, or the wrong file)."""


class KeyEncryptionKeys(Protocol):
    """The KMS hook. ``context`` is bound to the wrapped key, so a wrapped key can't be moved."""

    @property
    def current_id(self) -> str: ...

    def wrap(self, data_key: bytes, *, context: bytes) -> tuple[str, bytes]:
        """Wrap under the current KEK; returns (kek_id, wrapped)."""
        ...

    def unwrap(self, kek_id: str, wrapped: bytes, *, context: bytes) -> bytes: ...

    def tombstone(self, key_ids: Sequence[str]) -> None:
        """Remember shredded data keys where the KEK lives, so no backup can bring them back."""
        ...

    def shredded_key_ids(self) -> frozenset[str]: ...


@dataclass
class FileKeyring:
    """KEKs in one JSON file: the current one wraps, every listed one can still unwrap."""

    path: Path
    current: str
    keys: dict[str, bytes] = field(default_factory=dict)
    shredded: set[str] = field(default_factory=set)

    @classmethod
    def load_or_create(cls, path: Path) -> FileKeyring:
        if path.exists():
            raw = json.loads(path.read_bytes())
            keys = {kid: base64.b64decode(value) for kid, value in raw["keys"].items()}
            if raw["current"] not in keys or any(len(k) != KEY_BYTES for k in keys.values()):
                raise ValueError(f"{path} is not a valid keyring (current key missing or wrong key size)")
            return cls(path=path, current=raw["current"], keys=keys, shredded=set(raw.get("shredded", [])))
        ring = cls(path=path, current="")
        ring.add_new()
        return ring

    @property
    def current_id(self) -> str:
        return self.current

    def add_new(self) -> str:
        """Make a fresh KEK current (older ones stay to unwrap until re-wrapping is done)."""
        kek_id = f"kek-{uuid.uuid4().hex[:12]}"
        self.keys[kek_id] = AESGCM.generate_key(bit_length=256)
        self.current = kek_id
        self._save()
        return kek_id

    def retire(self, kek_id: str) -> None:
        if kek_id == self.current:
            raise ValueError("the current KEK cannot be retired; add a new one first")
        self.keys.pop(kek_id, None)
        self._save()

    def _save(self) -> None:
        body = {
            "current": self.current,
            "keys": {k: base64.b64encode(v).decode() for k, v in self.keys.items()},
            "shredded": sorted(self.shredded),
        }
        write_private_file(self.path, json.dumps(body, indent=1).encode())

    def tombstone(self, key_ids: Sequence[str]) -> None:
        if set(key_ids) - self.shredded:
            self.shredded.update(key_ids)
            self._save()

    def shredded_key_ids(self) -> frozenset[str]:
        return frozenset(self.shredded)

    def wrap(self, data_key: bytes, *, context: bytes) -> tuple[str, bytes]:
        nonce = os.urandom(NONCE_BYTES)
        return self.current, nonce + AESGCM(self.keys[self.current]).encrypt(nonce, data_key, context)

    def unwrap(self, kek_id: str, wrapped: bytes, *, context: bytes) -> bytes:
        kek = self.keys.get(kek_id)
        if kek is None:
            raise UnknownKek(f"data key wrapped by {kek_id!r}, which is not in {self.path}")
        try:
            return AESGCM(kek).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], context)
        except InvalidTag as exc:
            raise UnknownKek(f"wrapped data key does not open under {kek_id!r} for this owner") from exc
