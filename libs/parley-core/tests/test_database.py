"""The data folder's choice of database: recorded once, kept, never silently switched."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from parley_core.database import (
    DATABASE_URL_FILE,
    SQLITE_ARCHIVE,
    DatabaseChoiceRefused,
    UnsupportedDatabase,
    choose_database,
    location_of,
    recorded_database_url,
    with_driver,
)

URL = "postgresql://parley:secret@db.example:5432/parley"


def test_a_plain_postgresql_url_gets_the_installed_driver() -> None:
    assert with_driver(URL) == "postgresql+psycopg://parley:secret@db.example:5432/parley"
    assert with_driver("postgres://h/db") == "postgresql+psycopg://h/db"
    assert with_driver("postgresql+psycopg://h/db") == "postgresql+psycopg://h/db"
    assert with_driver("sqlite:////x/archive.db") == "sqlite:////x/archive.db"


def test_the_location_hides_the_password() -> None:
    assert location_of(URL) == "postgresql+psycopg://parley@db.example:5432/parley"


def test_the_first_choice_is_recorded_privately_and_kept(tmp_path: Path) -> None:
    assert choose_database(tmp_path, URL) == with_driver(URL)
    assert recorded_database_url(tmp_path) == with_driver(URL)
    assert stat.S_IMODE((tmp_path / DATABASE_URL_FILE).stat().st_mode) == 0o600
    assert choose_database(tmp_path, "") == with_driver(URL)  # a later start without the flag


def test_a_new_password_for_the_same_database_replaces_the_record(tmp_path: Path) -> None:
    choose_database(tmp_path, URL)
    rotated = URL.replace("secret", "rotated")
    assert choose_database(tmp_path, rotated) == with_driver(rotated)
    assert recorded_database_url(tmp_path) == with_driver(rotated)


def test_another_database_for_the_folder_is_refused(tmp_path: Path) -> None:
    choose_database(tmp_path, URL)
    with pytest.raises(DatabaseChoiceRefused, match=re.escape("archive is in postgresql+psycopg://parley@db.example")):
        choose_database(tmp_path, "postgresql://parley@other.example/parley")
    assert recorded_database_url(tmp_path) == with_driver(URL)


def test_postgresql_on_a_folder_whose_archive_is_sqlite_is_refused(tmp_path: Path) -> None:
    (tmp_path / SQLITE_ARCHIVE).parent.mkdir(parents=True)
    (tmp_path / SQLITE_ARCHIVE).touch()
    with pytest.raises(DatabaseChoiceRefused, match="archive is in SQLite"):
        choose_database(tmp_path, URL)
    assert not (tmp_path / DATABASE_URL_FILE).exists()


@pytest.mark.parametrize("url", ["mysql://someone@db/parley", "db.example:5432", "oracle+cx://x/y"])
def test_a_database_the_platform_does_not_run_on_is_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(UnsupportedDatabase, match="postgresql://USER"):
        choose_database(tmp_path, url)
    assert not (tmp_path / "secrets").exists()


def test_sqlite_is_no_choice_to_record(tmp_path: Path) -> None:
    assert choose_database(tmp_path, "") == ""
    assert not (tmp_path / "secrets").exists()
