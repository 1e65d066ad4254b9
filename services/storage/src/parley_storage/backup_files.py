"""A backup's files sealed in chunks: AES-256-GCM under the backup's content key, each chunk
bound to the backup id, the file's name, its index and whether it is the last, so chunks can be
neither moved between files, reordered, dropped nor truncated unnoticed."""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from parley_core.files import PRIVATE_FILE_MODE
from parley_storage.backup_keys import BackupInvalid

FORMAT = "parley-storage-backup/2"
CHUNK_BYTES = 4 * 1024 * 1024
NONCE_BYTES = 12


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _chunk_aad(backup_id: str, name: str, index: int, last: bool) -> bytes:
    return f"{FORMAT}|{backup_id}|{name}|{index}|{int(last)}".encode()


def _encrypt_file(plain: Path, sealed: Path, key: bytes, backup_id: str) -> None:
    aead = AESGCM(key)
    size = plain.stat().st_size
    count = max(1, -(-size // CHUNK_BYTES))
    # Created 0600 like the manifest: a backup is only for the operator, whatever the umask.
    sealed_fd = os.open(sealed, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    with plain.open("rb") as src, os.fdopen(sealed_fd, "wb") as dst:
        for index in range(count):
            nonce = os.urandom(NONCE_BYTES)
            body = aead.encrypt(
                nonce, src.read(CHUNK_BYTES), _chunk_aad(backup_id, sealed.name, index, index == count - 1)
            )
            dst.write(struct.pack(">I", len(body)) + nonce + body)
        dst.flush()
        os.fsync(dst.fileno())


def _decrypt_chunks(sealed: Path, key: bytes, backup_id: str) -> Iterator[bytes]:
    aead = AESGCM(key)
    with sealed.open("rb") as src:
        index = 0
        header = src.read(4)
        while header:
            if len(header) != 4:
                raise BackupInvalid(f"{sealed.name} is truncated")
            (length,) = struct.unpack(">I", header)
            nonce, body = src.read(NONCE_BYTES), src.read(length)
            if len(body) != length:
                raise BackupInvalid(f"{sealed.name} is truncated")
            header = src.read(4)
            try:
                yield aead.decrypt(nonce, body, _chunk_aad(backup_id, sealed.name, index, not header))
            except InvalidTag as exc:
                raise BackupInvalid(
                    f"{sealed.name} chunk {index} does not authenticate (damaged or reordered)"
                ) from exc
            index += 1


def seal_file(plain: Path, out_dir: Path, name: str, key: bytes, backup_id: str) -> dict[str, Any]:
    _encrypt_file(plain, out_dir / name, key, backup_id)
    return {
        "bytes": (out_dir / name).stat().st_size,
        "sha256": sha256_of(out_dir / name),
        "plaintext_sha256": sha256_of(plain),
    }


def open_file(sealed: Path, manifest: dict[str, Any], key: bytes, *, into: Path) -> None:
    """Decrypt one sealed file of the backup into `into`, checking every chunk and the plaintext."""
    digest = hashlib.sha256()
    with into.open("wb") as out:
        for chunk in _decrypt_chunks(sealed, key, manifest["backup_id"]):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != manifest["files"][sealed.name]["plaintext_sha256"]:
        raise BackupInvalid(f"decrypted {sealed.name} does not match its checksum")
