"""Key-encryption keys: what wraps the archive's data keys, and the hook for an external KMS.

The KEK never lives in the database. By default the KEKs are a keyring file in the data folder's
``secrets/`` (0600, created on first start). Beside its KEK the keyring keeps the live copy of
every data key, wrapped; the copies in the database (and so in data backups) are only replicas.
That is what lets erasure reach backups: erasing a user drops their data keys from the keyring,
re-wraps every other data key under a new KEK generation and destroys all earlier KEKs. An
earlier backup's wrapped keys then open under no KEK that still exists; restoring it takes the
surviving data keys from the keyring, and the erased ones are simply not there.

An operator with a KMS (Vault transit, AWS KMS, an HSM) implements ``KeyEncryptionKeys`` with
the KMS's wrap/unwrap calls and key-version destruction, and passes it to ``StorageApp``.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from parley_core.files import write_private_file

NONCE_BYTES = 12
KEY_BYTES = 32


class UnknownKek(Exception):
    """A data key names a KEK this keyring does not hold (destroyed by a rotation, or the wrong file)."""


class KeyringUnreadable(Exception):
    """The keyring file is not one a keyring wrote: damaged, cut short, or another file copied over it."""


@dataclass(frozen=True)
class WrappedKey:
    """One data key as stored: whose it is and its bytes wrapped under one KEK."""

    key_id: str
    owner: str
    kek_id: str
    wrapped: bytes


@dataclass(frozen=True)
class Rotation:
    new_kek_id: str
    rewrapped: int
    destroyed_kek_ids: tuple[str, ...]


def data_key_context(key_id: str, owner: str) -> bytes:
    """Associated data of a wrapped data key: it opens only as this key of this owner."""
    return "\x1f".join(("parley-data-key-v1", key_id, owner)).encode()


class KeyEncryptionKeys(Protocol):
    """The KMS hook: wrap and keep data keys, unwrap them, rotate (and shred) by KEK generation."""

    @property
    def current_id(self) -> str: ...

    def wrap_and_keep(self, key_id: str, owner: str, data_key: bytes) -> WrappedKey:
        """Wrap a new data key under the current KEK and keep that copy; returns it for the database."""
        ...

    def unwrap(self, kek_id: str, wrapped: bytes, *, context: bytes) -> bytes: ...

    def kept_keys(self) -> Mapping[str, WrappedKey]:
        """The live copy of every data key not shredded, by key id."""
        ...

    def rotate(self, *, shred: Sequence[str] = ()) -> Rotation:
        """Forget ``shred``, re-wrap every other kept key under a new KEK, destroy every earlier KEK."""
        ...

    def shredded_key_ids(self) -> frozenset[str]: ...


class FileKeyring:
    """KEKs and the kept data keys in one JSON file, shared by every storage instance on the host.

    Every change happens under an exclusive lock on ``<file>.lock``, on the file as it is on disk
    then, and replaces it atomically; every read first re-reads the file if another instance
    replaced it. So a rotation by one instance is never undone by another's stale copy.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.current = ""
        self.keys: dict[str, bytes] = {}
        self.data_keys: dict[str, WrappedKey] = {}
        self.shredded: set[str] = set()
        self._seen: tuple[int, int, int] | None = None
        # Archive transactions run in worker threads: a key kept during a rotation must not be lost.
        self._lock = threading.RLock()

    @classmethod
    def load_or_create(cls, path: Path) -> FileKeyring:
        ring = cls(path)
        with ring._exclusive():
            if not ring.keys:
                ring.current = ring._new_kek()
                ring._save()
        return ring

    def _refresh(self) -> None:
        """Read the file again if it was replaced since we last read or wrote it."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if seen == self._seen:
            return
        try:
            raw = json.loads(self.path.read_bytes())
            current, keys = raw["current"], {kid: base64.b64decode(value) for kid, value in raw["keys"].items()}
            data_keys = {
                key_id: WrappedKey(key_id, entry["owner"], entry["kek"], base64.b64decode(entry["wrapped"]))
                for key_id, entry in raw.get("data_keys", {}).items()
            }
            shredded = set(raw.get("shredded", []))
            whole = current in keys and all(len(k) == KEY_BYTES for k in keys.values())
        except (ValueError, KeyError, TypeError, AttributeError):  # not JSON, or not a keyring's JSON
            whole = False
        if not whole:  # a service or tool would otherwise stop on a parser's traceback
            raise KeyringUnreadable(f"{self.path} is not a readable keyring: copy it again from your key backup")
        self.current, self.keys, self.data_keys, self.shredded = current, keys, data_keys, shredded
        self._seen = seen

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """This thread and no other instance changes the keyring, starting from the file's state."""
        with self._lock:
            fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._refresh()
                yield
            finally:
                os.close(fd)  # releases the lock

    @property
    def current_id(self) -> str:
        with self._lock:
            self._refresh()
            return self.current

    def _new_kek(self) -> str:
        kek_id = f"kek-{uuid.uuid4().hex[:12]}"
        self.keys[kek_id] = AESGCM.generate_key(bit_length=256)
        return kek_id

    def _save(self) -> None:
        body = {
            "current": self.current,
            "keys": {k: base64.b64encode(v).decode() for k, v in self.keys.items()},
            "data_keys": {
                k.key_id: {"owner": k.owner, "kek": k.kek_id, "wrapped": base64.b64encode(k.wrapped).decode()}
                for k in self.data_keys.values()
            },
            "shredded": sorted(self.shredded),
        }
        write_private_file(self.path, json.dumps(body, indent=1).encode())
        st = self.path.stat()
        self._seen = (st.st_ino, st.st_mtime_ns, st.st_size)

    def _wrap(self, key_id: str, owner: str, data_key: bytes) -> WrappedKey:
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self.keys[self.current]).encrypt(nonce, data_key, data_key_context(key_id, owner))
        return WrappedKey(key_id, owner, self.current, nonce + sealed)

    def wrap_and_keep(self, key_id: str, owner: str, data_key: bytes) -> WrappedKey:
        with self._exclusive():
            wrapped = self._wrap(key_id, owner, data_key)
            self.data_keys[key_id] = wrapped
            self._save()
            return wrapped

    def unwrap(self, kek_id: str, wrapped: bytes, *, context: bytes) -> bytes:
        with self._lock:
            self._refresh()
            kek = self.keys.get(kek_id)
        if kek is None:
            raise UnknownKek(f"data key wrapped by {kek_id!r}, which is not (or no longer) in {self.path}")
        try:
            return AESGCM(kek).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], context)
        except InvalidTag as exc:
            raise UnknownKek(f"wrapped data key does not open under {kek_id!r} for this owner") from exc

    def kept_keys(self) -> Mapping[str, WrappedKey]:
        with self._lock:
            self._refresh()
            return dict(self.data_keys)

    def rotate(self, *, shred: Sequence[str] = ()) -> Rotation:
        with self._exclusive():
            survivors = [k for k in self.data_keys.values() if k.key_id not in shred]
            plain = {
                k.key_id: self.unwrap(k.kek_id, k.wrapped, context=data_key_context(k.key_id, k.owner))
                for k in survivors
            }
            destroyed = tuple(sorted(self.keys))
            self.current = self._new_kek()
            self.data_keys = {k.key_id: self._wrap(k.key_id, k.owner, plain[k.key_id]) for k in survivors}
            self.shredded.update(shred)
            for kek_id in destroyed:
                del self.keys[kek_id]
            self._save()  # one atomic replace: the old KEKs and the shredded keys go together
            return Rotation(self.current, len(survivors), destroyed)

    def shredded_key_ids(self) -> frozenset[str]:
        with self._lock:
            self._refresh()
            return frozenset(self.shredded)
