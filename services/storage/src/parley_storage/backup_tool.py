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
from typing import Any

from parley.auth.v1.events_pb2 import TotpEnrolled
from sqlalchemy import Connection, select

from parley_core.config import AUTH_MFA_KEY_FILE, REGISTRY_FOLDER, Settings
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
    location_of,
    rebind_restored,
)
from parley_storage.restored import mark_restored, what_a_restore_holds
from parley_storage.schema import events
from parley_storage.service import KEYRING_FILE, database_url
from parley_storage.settings import StorageSettings

# The secrets a restore reads, exactly as README's "Backups" names them.
RESTORE_SECRETS = (KEYRING_FILE, BACKUP_KEY_FILE, VERIFY_KEY_FILE)
# Secrets the services need to run on the restored event log, by the archived events that need them.
SECRETS_FOR_EVENTS = {TotpEnrolled.DESCRIPTOR.full_name: AUTH_MFA_KEY_FILE}


def require_platform_secrets(conn: Connection, secrets_dir: Path) -> None:
    """Refuse a restore whose event log the platform could not use without a missing secret."""
    kinds = conn.execute(
        select(events.c.event_type).where(events.c.event_type.in_(list(SECRETS_FOR_EVENTS))).distinct()
    )
    missing = sorted({SECRETS_FOR_EVENTS[kind] for kind in kinds.scalars()} - {p.name for p in secrets_dir.iterdir()})
    if missing:
        raise RestoreRefused(
            f"the archive holds MFA enrolments, whose TOTP secrets auth sealed with {', '.join(missing)}: copy it "
            f"from your key backup into {secrets_dir} as well (without it those users could not log in)"
        )


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
                registry=settings.data_dir / REGISTRY_FOLDER,
            )
        finally:
            engine.dispose()
        return {"created": str(args.backup), **manifest}
    if args.action == "verify":
        return {"verified": str(args.backup), **verify_backup(args.backup, BackupKeys.load(settings.secrets_dir))}
    return {"restored": str(args.backup), **restore(settings, args.backup)}


def restore(settings: Settings, backup: Path) -> dict[str, Any]:
    """Into an empty data folder (only the key backup's secrets in it); marked for re-seeding."""
    missing = [name for name in RESTORE_SECRETS if not (settings.secrets_dir / name).exists()]
    if missing:
        raise RestoreRefused(
            f"{settings.secrets_dir} lacks {', '.join(missing)}: copy {', '.join(RESTORE_SECRETS)} "
            "from your key backup into it"
        )
    sqlite_file = None if settings.database_url else settings.data_dir / "storage" / "archive.db"
    for path in (settings.data_dir / "nats", sqlite_file):  # an event log, an archive of its own
        if path is not None and path.exists():
            raise RestoreRefused(f"{path} exists; restore into an empty data folder (only secrets/ in it)")
    url = database_url(settings)
    binding = ResidencyBinding.from_settings(StorageSettings())
    check_configured(binding, url)

    def before_commit(conn: Connection) -> None:  # a refusal here rolls the whole restore back
        require_platform_secrets(conn, settings.secrets_dir)
        rebind_restored(conn, binding, url)

    engine = open_engine(url)
    try:
        manifest = restore_backup(
            backup,
            BackupKeys.load(settings.secrets_dir),
            FileKeyring.load_or_create(settings.secrets_dir / KEYRING_FILE),
            engine,
            registry=settings.data_dir / REGISTRY_FOLDER,
            before_commit=before_commit,
        )
    except BaseException:
        engine.dispose()
        if sqlite_file is not None:  # this restore made it: gone again, so a corrected retry may run
            for suffix in ("", "-wal", "-shm"):
                sqlite_file.with_name(sqlite_file.name + suffix).unlink(missing_ok=True)
        raise
    finally:
        engine.dispose()
    where = location_of(settings.database_url) if settings.database_url else ""
    mark_restored(settings.data_dir, manifest["backup_id"], manifest["created_at"], where)
    print(f"note: {what_a_restore_holds(settings.data_dir)}", file=sys.stderr)
    return manifest


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
