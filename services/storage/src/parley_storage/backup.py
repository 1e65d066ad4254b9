"""Verified backups of the archive: a consistent snapshot, encrypted, signed, with a manifest.

A backup is a folder of these files:

- ``archive.sqlite.enc``: the snapshot as a SQLite database (whatever the source database),
  AES-256-GCM in chunks under a fresh content key; each chunk binds the backup id, the file's
  name, its index and whether it is the last, so chunks can be neither moved between files,
  reordered, dropped nor truncated unnoticed.
- ``registry.tar.enc``: the patch registry's folder (its signed TUF release repository with the
  released wheels, and its online signing keys; not the offline root keys), sealed the same way,
  when the data folder has one: a restored platform serves the same releases.
- ``manifest.json``: what was backed up (schema revision, consumer positions, event counts),
  the SHA-256 of every file and of each plaintext, and the content key wrapped under the backup
  key.
- ``manifest.sig``: an Ed25519 signature over manifest.json.

The records inside stay sealed under their data keys. The backup's copies of those keys are
wrapped under the KEK generation of its day, which the next erasure destroys; restoring takes
the live data keys from the keyring instead, so keys shredded since the backup are gone from
the restored copy and every other key opens.
The snapshot is consistent: SQLite's online backup API, or one REPEATABLE READ transaction on
PostgreSQL.

The backup secrets are backup_keys.py's, the chunked sealing of a file backup_files.py's; this
module takes, verifies and restores the snapshot with them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import uuid
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, Engine, func, insert, select, text

from parley_core.files import ensure_private_dir, write_private_file
from parley_storage.archive import open_engine
from parley_storage.backup_files import CHUNK_BYTES, FORMAT, NONCE_BYTES, open_file, seal_file, sha256_of
from parley_storage.backup_keys import BackupInvalid, BackupKeys
from parley_storage.datakeys import DataKeys
from parley_storage.kek import KeyEncryptionKeys
from parley_storage.key_files import BACKUP_KEY_FILE, SIGNING_KEY_FILE, VERIFY_KEY_FILE
from parley_storage.migrate import head_revision, upgrade_to_head
from parley_storage.schema import consumer_positions, events, metadata

__all__ = [  # the backup's secrets and errors are used under these names too
    "BACKUP_KEY_FILE",
    "MANIFEST",
    "REGISTRY",
    "SIGNATURE",
    "SIGNING_KEY_FILE",
    "SNAPSHOT",
    "VERIFY_KEY_FILE",
    "BackupInvalid",
    "BackupKeys",
    "RestoreRefused",
    "create_backup",
    "refuse_existing_backup",
    "restore_backup",
    "verify_backup",
]

SNAPSHOT = "archive.sqlite.enc"
REGISTRY = "registry.tar.enc"
# Left out of the registry copy: the root keys belong offline (dot files, half-written, too).
REGISTRY_LEFT_OUT = ("keys/offline/",)
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
COPY_ROWS = 1000


class RestoreRefused(Exception):
    """Restoring would overwrite or mix with existing data."""


def _snapshot(source: Engine, target_file: Path) -> None:
    """A consistent copy of the archive into a SQLite file, taken while the service writes."""
    if source.dialect.name == "sqlite":
        raw = source.raw_connection()
        try:
            destination = sqlite3.connect(target_file)
            try:
                raw.driver_connection.backup(destination)  # type: ignore[union-attr]
            finally:
                destination.close()
        finally:
            raw.close()
        return
    target = open_engine(f"sqlite:///{target_file}")
    try:
        upgrade_to_head(target)
        snapshot_options = {"isolation_level": "REPEATABLE READ"}
        with (
            source.connect().execution_options(**snapshot_options) as src,
            src.begin(),
            target.begin() as dst,
        ):
            src.execute(text("SET TRANSACTION READ ONLY"))
            revision = src.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
            if revision != head_revision():
                raise RestoreRefused(f"source schema {revision} is not this code's {head_revision()}")
            _copy_rows(src, dst)
    finally:
        target.dispose()


def _copy_rows(src: Connection, dst: Connection) -> None:
    for table in metadata.sorted_tables:
        result = src.execute(select(table)).mappings()
        while rows := result.fetchmany(COPY_ROWS):
            dst.execute(insert(table), [dict(r) for r in rows])


def _summary(conn: Connection) -> dict[str, Any]:
    positions = {r.consumer: r.last_seq for r in conn.execute(select(consumer_positions))}
    counts = {
        r.stream: r.n for r in conn.execute(select(events.c.stream, func.count().label("n")).group_by(events.c.stream))
    }
    return {"consumer_positions": positions, "event_counts": counts}


def _pack_registry(folder: Path, tar_path: Path) -> int:
    """The registry's folder as a tar. timestamp.json is read first and the rest listed after it:
    every snapshot and target it names was written before it, so the copy is a consistent
    repository even while the registry publishes."""

    def kept(path: Path) -> bool:
        name = path.relative_to(folder).as_posix()
        return path.is_file() and not path.name.startswith(".") and not name.startswith(REGISTRY_LEFT_OUT)

    def add(tar: tarfile.TarFile, path: Path) -> None:
        if kept(path):
            with contextlib.suppress(FileNotFoundError):  # replaced meanwhile: its successor is listed
                tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)

    with tarfile.open(tar_path, "w") as tar:
        first = sorted(folder.rglob("timestamp.json"))
        for path in first:
            add(tar, path)
        for path in sorted(folder.rglob("*")):  # listed only now, after timestamp.json was read
            if path not in first:
                add(tar, path)
        return len(tar.getmembers())


def create_backup(
    source: Engine,
    keys: BackupKeys,
    out_dir: Path,
    *,
    point: dict[str, Any] | None = None,
    registry: Path | None = None,
) -> dict[str, Any]:
    """Snapshot, encrypt, checksum and sign; returns the manifest. ``out_dir`` must not exist,
    and does not exist either after a failure (or an interrupt): a retry may use the same name.

    ``registry``: the patch registry's folder, copied after the snapshot, so every release the
    archived events name is in the copy.
    """
    signing_key = keys.require_signing_key()
    refuse_existing_backup(out_dir)
    ensure_private_dir(out_dir)
    try:
        return _create_backup(source, signing_key, keys.wrapping_key, out_dir, point=point, registry=registry)
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise


def refuse_existing_backup(out_dir: Path) -> None:
    if out_dir.exists():
        raise RestoreRefused(f"{out_dir} exists; choose a new folder for each backup")


def _create_backup(
    source: Engine,
    signing_key: Ed25519PrivateKey,
    wrapping_key: bytes,
    out_dir: Path,
    *,
    point: dict[str, Any] | None,
    registry: Path | None,
) -> dict[str, Any]:
    backup_id = uuid.uuid4().hex
    content_key = AESGCM.generate_key(bit_length=256)
    files: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=out_dir) as scratch:
        plain = Path(scratch) / "archive.sqlite"
        _snapshot(source, plain)
        snapshot_engine = open_engine(f"sqlite:///{plain}")
        try:
            with snapshot_engine.connect() as conn:
                summary = _summary(conn)
                revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
            snapshot_engine.dispose()
            with closing(sqlite3.connect(plain)) as db:  # fold the WAL into the file before encrypting it
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                db.execute("PRAGMA journal_mode=DELETE")
        finally:
            snapshot_engine.dispose()
        files[SNAPSHOT] = seal_file(plain, out_dir, SNAPSHOT, content_key, backup_id)
        registry_files = 0
        if registry is not None and registry.is_dir():
            packed = Path(scratch) / "registry.tar"
            registry_files = _pack_registry(registry, packed)
            files[REGISTRY] = seal_file(packed, out_dir, REGISTRY, content_key, backup_id)
    nonce = os.urandom(NONCE_BYTES)
    wrapped = nonce + AESGCM(wrapping_key).encrypt(nonce, content_key, f"{FORMAT}|{backup_id}".encode())
    manifest = {
        "format": FORMAT,
        "backup_id": backup_id,
        "created_at": datetime.now(UTC).isoformat(),
        "source_dialect": source.dialect.name,
        "schema_revision": revision,
        "stream_point": point,  # every event acknowledged on these streams up to here is inside
        **summary,
        "registry_files": registry_files,
        "wrapped_content_key": base64.b64encode(wrapped).decode(),
        "chunk_bytes": CHUNK_BYTES,
        "files": files,
    }
    body = json.dumps(manifest, indent=1, sort_keys=True).encode()
    write_private_file(out_dir / MANIFEST, body)
    write_private_file(out_dir / SIGNATURE, signing_key.sign(body))
    return manifest


def verify_backup(
    backup_dir: Path, keys: BackupKeys, *, into: Path | None = None, registry_into: Path | None = None
) -> dict[str, Any]:
    """Check signature, checksums, every chunk's tag, the snapshot's integrity and the registry
    copy; optionally decrypt the snapshot (`into`) and the registry's tar (`registry_into`)."""
    if backup_dir.exists() and not backup_dir.is_dir():
        raise BackupInvalid(f"{backup_dir} is not a backup folder")
    try:
        body = (backup_dir / MANIFEST).read_bytes()
        signature = (backup_dir / SIGNATURE).read_bytes()
    except FileNotFoundError as exc:
        raise BackupInvalid(f"not a backup: {exc.filename} is missing") from exc
    try:
        keys.verify_key.verify(signature, body)
    except InvalidSignature as exc:
        raise BackupInvalid("manifest signature does not verify with this installation's backup key") from exc
    manifest: dict[str, Any] = json.loads(body)
    if manifest.get("format") != FORMAT:
        raise BackupInvalid(f"unknown backup format {manifest.get('format')!r}")
    for name, expected in manifest["files"].items():
        path = backup_dir / name
        if not path.exists():
            raise BackupInvalid(f"{name} is missing from {backup_dir} (its manifest lists it): is the copy complete?")
        if sha256_of(path) != expected["sha256"]:
            raise BackupInvalid(f"{name} does not match its checksum in the manifest")
    wrapped = base64.b64decode(manifest["wrapped_content_key"])
    try:
        content_key = AESGCM(keys.wrapping_key).decrypt(
            wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], f"{FORMAT}|{manifest['backup_id']}".encode()
        )
    except InvalidTag as exc:
        raise BackupInvalid("the content key does not open with this installation's backup key") from exc
    with tempfile.TemporaryDirectory() as scratch:
        plain = into or Path(scratch) / "archive.sqlite"
        open_file(backup_dir / SNAPSHOT, manifest, content_key, into=plain)
        with closing(sqlite3.connect(plain)) as db:
            if db.execute("PRAGMA integrity_check").fetchone() != ("ok",):
                raise BackupInvalid("snapshot fails SQLite's integrity check")
            if db.execute("SELECT version_num FROM alembic_version").fetchone() != (manifest["schema_revision"],):
                raise BackupInvalid("snapshot's schema revision differs from the manifest")
        if REGISTRY in manifest["files"]:
            packed = registry_into or Path(scratch) / "registry.tar"
            open_file(backup_dir / REGISTRY, manifest, content_key, into=packed)
            try:
                with tarfile.open(packed) as tar:
                    count = len(tar.getmembers())
            except tarfile.TarError as exc:
                raise BackupInvalid(f"{REGISTRY} is not a readable tar: {exc}") from None
            if count != manifest["registry_files"]:
                raise BackupInvalid(f"{REGISTRY} holds {count} files, the manifest says {manifest['registry_files']}")
    return manifest


def restore_backup(
    backup_dir: Path,
    keys: BackupKeys,
    keks: KeyEncryptionKeys,
    target: Engine,
    *,
    registry: Path | None = None,
    before_commit: Callable[[Connection, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Verify, then load the snapshot into an empty database with the keyring's live data keys,
    and the registry's copy into `registry` (which must not exist) when the backup has one."""
    if registry is not None and registry.exists():
        raise RestoreRefused(f"{registry} exists; restore into an empty data folder")
    with tempfile.TemporaryDirectory() as scratch:
        plain, packed = Path(scratch) / "archive.sqlite", Path(scratch) / "registry.tar"
        manifest = verify_backup(backup_dir, keys, into=plain, registry_into=packed)
        if manifest["schema_revision"] != head_revision():
            raise RestoreRefused(
                f"backup schema {manifest['schema_revision']} differs from this code's {head_revision()}; "
                "restore with the parley-storage version that took it"
            )
        unpacked = Path(scratch) / "registry"
        if registry is not None and packed.exists():
            with tarfile.open(packed) as tar:
                tar.extractall(unpacked, filter="data")  # no absolute paths, links out or devices
        upgrade_to_head(target)
        snapshot = open_engine(f"sqlite:///{plain}")
        moved = False
        try:
            with snapshot.connect() as src, target.begin() as dst:
                if any(dst.execute(select(func.count()).select_from(t)).scalar_one() for t in metadata.sorted_tables):
                    raise RestoreRefused("the target database already holds an archive; restore into an empty one")
                _copy_rows(src, dst)
                live = DataKeys(keks)
                live.sync(dst)  # the backup's key copies are replaced by the keyring's
                if missing := live.unopenable(dst):
                    raise RestoreRefused(
                        f"the keyring is older than this backup: it cannot open {sum(missing.values())} of its data "
                        f"keys (key generation {', '.join(sorted(missing))}, made after this copy of the keyring); "
                        "copy the newest storage-kek.json from your key backup and restore again"
                    )
                live.shred_recorded_erasures(dst)  # a keyring copy older than an erasure the backup holds
                # Everything in place before the commit, so that what commits is whole (a failed
                # commit takes the registry away again, below).
                if registry is not None and unpacked.exists():
                    ensure_private_dir(registry.parent)
                    shutil.move(unpacked, registry)
                    moved = True
                if before_commit is not None:
                    before_commit(dst, manifest)  # e.g. the residency check: a refusal rolls everything back
        except BaseException:
            if moved and registry is not None:
                shutil.rmtree(registry, ignore_errors=True)
            raise
        finally:
            snapshot.dispose()
    return manifest
