"""`python -m parley_storage.backup_tool create|verify|restore`: what `parley backup` runs.

It works on the database directly (online for create: the service keeps running), so a restore
needs no running platform. Output is one JSON object on stdout; errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from parley_core.config import Settings
from parley_storage.archive import open_engine
from parley_storage.backup import (
    BACKUP_KEY_FILE,
    VERIFY_KEY_FILE,
    BackupInvalid,
    BackupKeys,
    RestoreRefused,
    create_backup,
    restore_backup,
    verify_backup,
)
from parley_storage.backup_point import ArchiveBehind, read_point_sync, wait_until_archived
from parley_storage.kek import FileKeyring
from parley_storage.migrate import SchemaNewerThanCode, UnversionedDatabase
from parley_storage.residency import (
    ResidencyBinding,
    ResidencyViolation,
    check_configured,
    rebind_restored,
)
from parley_storage.restored import WHAT_A_RESTORE_HOLDS, mark_restored
from parley_storage.service import KEYRING_FILE, database_url
from parley_storage.settings import StorageSettings

# The secrets a restore reads, exactly as README's "Backups" names them.
RESTORE_SECRETS = (KEYRING_FILE, BACKUP_KEY_FILE, VERIFY_KEY_FILE)


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings(service="storage", data_dir=args.data_dir)
    if args.database_url:
        settings.database_url = args.database_url
    return settings


def run(args: argparse.Namespace) -> dict[str, object]:
    settings = _settings(args)
    if args.action == "create":
        engine = open_engine(database_url(settings))
        try:
            point = read_point_sync(settings.data_dir)
            if point is not None:
                wait_until_archived(engine, point, timeout_s=args.wait_seconds)
            manifest = create_backup(
                engine,
                BackupKeys.load_or_create(settings.secrets_dir),
                args.backup,
                point={stream: asdict(extent) for stream, extent in point.items()} if point else None,
            )
        finally:
            engine.dispose()
        return {"created": str(args.backup), **manifest}
    if args.action == "verify":
        return {"verified": str(args.backup), **verify_backup(args.backup, BackupKeys.load(settings.secrets_dir))}
    keyring_path = settings.secrets_dir / KEYRING_FILE
    missing = [name for name in RESTORE_SECRETS if not (settings.secrets_dir / name).exists()]
    if missing:
        raise RestoreRefused(
            f"{settings.secrets_dir} lacks {', '.join(missing)}: copy {', '.join(RESTORE_SECRETS)} "
            "from your key backup into it"
        )
    if not settings.database_url and (settings.data_dir / "storage" / "archive.db").exists():
        raise RestoreRefused(
            f"{settings.data_dir / 'storage' / 'archive.db'} exists; restore into an empty data folder"
        )
    url = database_url(settings)
    binding = ResidencyBinding.from_settings(StorageSettings())
    check_configured(binding, url)
    engine = open_engine(url)
    try:
        manifest = restore_backup(
            args.backup,
            BackupKeys.load(settings.secrets_dir),
            FileKeyring.load_or_create(keyring_path),
            engine,
            before_commit=lambda conn: rebind_restored(conn, binding, url),
        )
    finally:
        engine.dispose()
    mark_restored(settings.data_dir, manifest["backup_id"])
    print(f"note: {WHAT_A_RESTORE_HOLDS}", file=sys.stderr)
    return {"restored": str(args.backup), **manifest}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="parley-storage-backup")
    parser.add_argument("action", choices=("create", "verify", "restore"))
    parser.add_argument("backup", type=Path, help="the backup folder (create: must not exist yet)")
    parser.add_argument("--data-dir", type=Path, default=Path(".parley"))
    parser.add_argument("--wait-seconds", type=float, default=120.0, help="how long to wait for the archive")
    parser.add_argument("--database-url", default="", help="default: $PARLEY_DATABASE_URL or SQLite in the data folder")
    args = parser.parse_args(argv)
    try:
        result = run(args)
    except (
        BackupInvalid,
        RestoreRefused,
        SchemaNewerThanCode,
        UnversionedDatabase,
        ArchiveBehind,
        ResidencyViolation,
    ) as exc:
        print(f"backup {args.action} failed: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    result.pop("wrapped_content_key", None)
    print(json.dumps(result, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
