"""Which database a data folder's archive lives in: SQLite in the folder, or PostgreSQL by URL.

`parley up --database-url` (or PARLEY_DATABASE_URL) chooses PostgreSQL once; the folder records the
URL (in secrets/, since a URL may carry a password) so later starts, backups and the re-seed after a
restore find the same archive without being told again. A folder whose archive is in one database
is never started against another: its event log and archive belong together.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from parley_core.files import ensure_private_dir, write_private_file

__all__ = [
    "DATABASE_URL_FILE",
    "SQLITE_ARCHIVE",
    "DatabaseChoiceRefused",
    "UnsupportedDatabase",
    "check_database_url",
    "choose_database",
    "location_of",
    "recorded_database_url",
    "with_driver",
]

# Relative to the data folder.
DATABASE_URL_FILE = Path("secrets") / "database-url"
SQLITE_ARCHIVE = Path("storage") / "archive.db"
# The driver this platform installs (psycopg 3); SQLAlchemy would pick psycopg2 for a bare URL.
_DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}
_SUPPORTED = ("sqlite", "postgresql")


class DatabaseChoiceRefused(ValueError):
    """The URL names no database the platform runs on, or not the one the folder's archive is in."""


def with_driver(url: str) -> str:
    """`postgresql://…` as an operator writes it, with the driver the platform has."""
    scheme, sep, rest = url.partition("://")
    return f"{_DRIVERS.get(scheme.lower(), scheme)}{sep}{rest}" if sep else url


def location_of(url: str) -> str:
    """The URL without its password: where the archive is, fit to print and to compare."""
    parts = urlsplit(with_driver(url))
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = (f"{parts.username}@" if parts.username else "") + host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def recorded_database_url(data_dir: Path) -> str:
    """The URL `parley up` recorded for this folder; empty when its archive is SQLite in the folder."""
    path = data_dir / DATABASE_URL_FILE
    return path.read_text(encoding="utf-8").strip() if path.exists() else ""


class UnsupportedDatabase(DatabaseChoiceRefused):
    """Not a URL of a database the platform runs on."""


def check_database_url(url: str) -> None:
    dialect = with_driver(url).partition("://")[0].split("+")[0].lower()
    if "://" not in url or dialect not in _SUPPORTED:
        raise UnsupportedDatabase(
            f"{location_of(url) if '://' in url else url!r} is not a database the platform runs on; "
            "give a PostgreSQL URL (postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE)"
        )


def choose_database(data_dir: Path, requested: str) -> str:
    """The database URL this folder's platform uses ("" for SQLite in the folder), recording a new choice.

    Checks everything before writing anything, so a refused choice leaves the folder as it was.
    """
    recorded = recorded_database_url(data_dir)
    if not requested:
        return recorded
    check_database_url(requested)
    requested = with_driver(requested)
    if recorded:
        if location_of(recorded) != location_of(requested):
            raise DatabaseChoiceRefused(
                f"{data_dir}'s archive is in {location_of(recorded)}; start it without --database-url "
                "(or with that URL), or move the archive to another database with `parley backup create` "
                "and `parley backup restore --database-url` into a new folder"
            )
    elif (data_dir / SQLITE_ARCHIVE).exists():
        raise DatabaseChoiceRefused(
            f"{data_dir}'s archive is in SQLite ({data_dir / SQLITE_ARCHIVE}); move it to PostgreSQL with "
            "`parley backup create` and `parley backup restore --database-url` into a new folder"
        )
    if requested != recorded:  # new, or the same database with a new password
        ensure_private_dir(data_dir)
        ensure_private_dir((data_dir / DATABASE_URL_FILE).parent)
        write_private_file(data_dir / DATABASE_URL_FILE, (requested + "\n").encode())
    return requested
