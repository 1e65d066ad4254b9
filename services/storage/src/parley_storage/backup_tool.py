"""`python -m parley_storage.backup_tool create|verify|restore`: what `parley backup` runs.

It works on the database directly (online for create: the service keeps running), so a restore
needs no running platform. Output is one JSON object on stdout; errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Any

from alembic.runtime.migration import MigrationContext
from parley.auth.v1.events_pb2 import TotpEnrolled, UserRegistered
from sqlalchemy import Connection, func, select
from sqlalchemy.exc import DBAPIError

from parley_core import backup_journal
from parley_core.config import REGISTRY_FOLDER, Settings
from parley_core.contracts import AUTH_SEALING_KEY_FILE
from parley_core.database import choose_database
from parley_storage.archive import open_engine
from parley_storage.backup import (
    BackupInvalid,
    BackupKeys,
    RestoreRefused,
    create_backup,
    refuse_existing_backup,
    restore_backup,
    verify_backup,
)
from parley_storage.backup_point import ArchiveBehind, PointUnreadable, read_point_sync, wait_until_archived
from parley_storage.kek import FileKeyring, KeyringUnreadable
from parley_storage.key_files import BACKUP_KEY_FILE, KEYRING_FILE, VERIFY_KEY_FILE
from parley_storage.migrate import SchemaNewerThanCode, UnversionedDatabase, check_schema_compatible
from parley_storage.residency import (
    ResidencyBinding,
    ResidencyViolation,
    check_configured,
    location_of,
    rebind_restored,
)
from parley_storage.restored import mark_restored, what_a_restore_holds
from parley_storage.schema import events
from parley_storage.service import configured_database_url, database_url, sqlite_archive_file
from parley_storage.settings import StorageSettings

# The secrets a restore reads, exactly as docs/storage.md's "Backups" names them; and with them
# the one auth needs for any archive that holds an account (require_platform_secrets), named in
# the same refusal so that one copy from the key backup is enough.
RESTORE_SECRETS = (KEYRING_FILE, BACKUP_KEY_FILE, VERIFY_KEY_FILE)
RESTORE_COPIES = (*RESTORE_SECRETS, AUTH_SEALING_KEY_FILE)
# What the data folder a restore goes into may hold: the key backup's secrets, and what is
# harmless from the same installation (its CA and certificates, the CLI's saved logins and
# publisher keys, old logs). Anything else is a platform's state, which the restored one must not
# inherit. Empty folders count as nothing.
RESTORE_MAY_FIND = ("secrets", "pki", "cli", "logs")
EX_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped with Ctrl-C


class NoArchive(Exception):
    """The data folder or database named holds no Parley archive (a wrong --data-dir, say)."""


# Secrets the services need to run on the restored event log, by the archived events that need
# them, and what those events hold (for the refusal's message).
SECRETS_FOR_EVENTS = {
    UserRegistered.DESCRIPTOR.full_name: (AUTH_SEALING_KEY_FILE, "accounts' password hashes"),
    TotpEnrolled.DESCRIPTOR.full_name: (AUTH_SEALING_KEY_FILE, "MFA enrolments' TOTP secrets"),
}


def require_platform_secrets(conn: Connection, secrets_dir: Path) -> None:
    """Refuse a restore whose event log the platform could not use without a missing secret."""
    query = select(events.c.event_type).where(events.c.event_type.in_(list(SECRETS_FOR_EVENTS))).distinct()
    kinds = set(conn.execute(query).scalars())
    present = {p.name for p in secrets_dir.iterdir()}
    needed = [secret for kind, secret in SECRETS_FOR_EVENTS.items() if kind in kinds]
    missing = sorted({secret for secret, _ in needed} - present)
    if missing:
        holds = " and ".join(what for secret, what in needed if secret in missing)
        raise RestoreRefused(
            f"the archive holds {holds}, which auth sealed with {', '.join(missing)}: copy it from your key backup"
            f" into {secrets_dir} as well (without it those users could not log in)"
        )


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings(service="storage", data_dir=args.data_dir)
    if args.database_url:
        settings.database_url = args.database_url
    settings.database_url = configured_database_url(settings)
    return settings


def note(line: str) -> None:
    print(f"note: {line}", file=sys.stderr)


def run(args: argparse.Namespace) -> dict[str, object]:
    settings = _settings(args)
    if args.action == "create":
        manifest = create(settings, args.backup, wait_seconds=args.wait_seconds)
        _journal(settings, "created", args.backup, manifest)
        return {"created": str(args.backup), **manifest}
    if args.action == "verify":
        manifest = verify_backup(args.backup, BackupKeys.load(settings.secrets_dir))
        _journal(settings, "verified", args.backup, manifest)
        return {"verified": str(args.backup), **manifest}
    return {"restored": str(args.backup), **restore(settings, args.backup)}


def _journal(settings: Settings, action: str, backup: Path, manifest: dict[str, Any]) -> None:
    """For the compliance report; a journal that cannot be written is said, the backup stands."""
    if problem := backup_journal.record(settings.data_dir, action, backup, manifest):
        note(f"the backup journal: {problem}")


def create(settings: Settings, backup: Path, *, wait_seconds: float) -> dict[str, Any]:
    """A backup of the archive this data folder (or PARLEY_DATABASE_URL) holds; anything that is
    not a platform's is refused before a file is made (no backup keys in a made-up folder)."""
    refuse_existing_backup(backup)
    if settings.database_url:
        url, where = settings.database_url, location_of(settings.database_url)
        hint = "is this the platform's database? (--database-url, PARLEY_DATABASE_URL)"
    else:
        archive_file = sqlite_archive_file(settings)
        url, where = f"sqlite:///{archive_file}", f"{settings.data_dir} ({archive_file.relative_to(settings.data_dir)})"
        hint = "is this the platform's data folder? (--data-dir)"
        if not archive_file.is_file():
            raise NoArchive(f"no archive in {where}: {hint}")
    if not settings.secrets_dir.is_dir():
        raise NoArchive(f"no secrets/ in {settings.data_dir}: is this the platform's data folder? (--data-dir)")
    engine = open_engine(url)
    try:
        check_schema_compatible(engine)
        with engine.connect() as conn:
            if not MigrationContext.configure(conn).get_current_heads():
                raise NoArchive(f"no archive in {where} (no Parley schema in it): {hint}")
        # Never made here: the key backup holds the ones storage made at its first start. A
        # missing or damaged one is refused before any wait.
        keys = BackupKeys.load(settings.secrets_dir)
        keys.require_signing_key()
        point = read_point_sync(settings.data_dir, note=note)
        if point:
            wait_until_archived(engine, point, timeout_s=wait_seconds, note=note)
        return create_backup(
            engine,
            keys,
            backup,
            point={stream: extent.recorded() for stream, extent in point.items()} if point else None,
            registry=settings.data_dir / REGISTRY_FOLDER,
        )
    finally:
        engine.dispose()


def refuse_used_folder(data_dir: Path) -> None:
    """A restore goes into a folder no platform has run in: anything of one (its event log, archive,
    registry, the agent's cache of another registry's metadata, a platform.json or client.json
    naming another platform's processes and ports) would be taken for the restored one's."""
    found = sorted(
        f"{entry.name}/" if entry.is_dir() else entry.name
        for entry in data_dir.iterdir()
        if entry.name not in RESTORE_MAY_FIND and not (entry.is_dir() and not any(entry.iterdir()))
    )
    if found:
        raise RestoreRefused(
            f"{data_dir} holds {', '.join(found)}: restore into an empty data folder (secrets/ from your key "
            f"backup in it, and if you like {', '.join(f'{name}/' for name in RESTORE_MAY_FIND[1:])} of the same "
            "installation)"
        )


def _listing(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def remove_created(folder: Path, before: set[Path]) -> None:
    """Remove what appeared in ``folder`` since ``before`` was listed: files, then the folders left empty."""
    for path in sorted(_listing(folder) - before, key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not path.is_symlink():
            with contextlib.suppress(OSError):  # not empty: something else made files in it
                path.rmdir()
        else:
            path.unlink(missing_ok=True)


def restore(settings: Settings, backup: Path) -> dict[str, Any]:
    """Into an empty data folder (only the key backup's secrets in it); marked for re-seeding.

    A refusal, a failure or an interrupt leaves the folder as it was (with PostgreSQL, the database
    keeps the empty tables of Parley's schema, which a retry reuses)."""
    missing = [name for name in RESTORE_COPIES if not (settings.secrets_dir / name).exists()]
    if set(missing) & set(RESTORE_SECRETS):
        raise RestoreRefused(
            f"{settings.secrets_dir} lacks {', '.join(missing)}: copy {', '.join(RESTORE_COPIES)} "
            f"from your key backup into it ({AUTH_SEALING_KEY_FILE} for a backup that holds any account)"
        )
    refuse_used_folder(settings.data_dir)
    binding = ResidencyBinding.from_settings(StorageSettings())
    before = _listing(settings.data_dir)
    try:
        url = database_url(settings)
        check_configured(binding, url)
        where = location_of(settings.database_url) if settings.database_url else ""
        if settings.database_url:  # `parley up` in this folder then finds its archive there
            choose_database(settings.data_dir, settings.database_url)

        def before_commit(conn: Connection, backup_manifest: dict[str, Any]) -> None:
            # A refusal here rolls the whole restore back.
            require_platform_secrets(conn, settings.secrets_dir)
            rebind_restored(conn, binding, url)
            # Marked before the commit: a restore killed after the commit but before a mark would
            # leave an archive that `parley up` takes for a running platform's and starts on with
            # an empty log. Killed before the commit instead, the mark's count tells re-seeding so.
            restored = conn.execute(select(func.count()).select_from(events)).scalar_one()
            mark_restored(
                settings.data_dir,
                backup_manifest["backup_id"],
                backup_manifest["created_at"],
                where,
                events=restored,
            )

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
        finally:
            engine.dispose()
    except BaseException:
        remove_created(settings.data_dir, before)  # so a corrected retry finds the folder as it was
        raise
    note(what_a_restore_holds(settings.data_dir))
    return manifest


# What `backup ACTION interrupted` says was left behind.
LEFT_BEHIND = {"create": "nothing was created", "verify": "nothing was changed", "restore": "nothing was restored"}


def main(argv: list[str] | None = None) -> None:
    # `parley backup` starts this tool with Ctrl-C ignored, so one that comes while it is still
    # loading is no traceback (`parley backup` passes it on); from here on it is handled.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = argparse.ArgumentParser(prog="parley-storage-backup")
    parser.add_argument("action", choices=("create", "verify", "restore"))
    parser.add_argument("backup", type=Path, help="the backup folder (create: must not exist yet)")
    parser.add_argument("--data-dir", type=Path, default=Path(".parley"))
    parser.add_argument("--wait-seconds", type=float, default=120.0, help="how long to wait for the archive")
    parser.add_argument("--database-url", default="", help="default: $PARLEY_DATABASE_URL or SQLite in the data folder")
    args = parser.parse_args(argv)
    try:
        result = run(args)
    except KeyboardInterrupt:
        print(f"backup {args.action} interrupted; {LEFT_BEHIND[args.action]}", file=sys.stderr)
        raise SystemExit(EX_INTERRUPTED) from None
    except (
        BackupInvalid,
        RestoreRefused,
        NoArchive,
        SchemaNewerThanCode,
        UnversionedDatabase,
        ArchiveBehind,
        PointUnreadable,
        ResidencyViolation,
        KeyringUnreadable,
        OSError,  # a folder that is a file, a permission
    ) as exc:
        print(f"backup {args.action} failed: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except DBAPIError as exc:  # the database refused or is not there
        reason = str(exc.orig or exc).strip().splitlines()[0]
        print(f"backup {args.action} failed: the database: {reason}", file=sys.stderr)
        raise SystemExit(1) from None
    result.pop("wrapped_content_key", None)
    print(json.dumps(result, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
