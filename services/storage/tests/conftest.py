"""The archive under test, on every backend it supports: the same contract runs on each."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from parley_storage.archive import SqlEventArchive, open_engine
from parley_storage.datakeys import DataKeys
from parley_storage.kek import FileKeyring
from parley_storage.migrate import upgrade_to_head
from parley_testing.processes import run_module
from parley_testing.shared_postgres import schema_url, shared_schema


def migrated_archive(url: str, keyring: Path) -> SqlEventArchive:
    """The archive as the service opens it: migrated to head, keys wrapped by a keyring file."""
    engine = open_engine(url)
    upgrade_to_head(engine)
    return SqlEventArchive(engine, DataKeys(FileKeyring.load_or_create(keyring)))


def postgres_schema_url() -> Iterator[str]:
    """A schema of its own for each test, dropped afterwards, so runs neither see nor leave data."""
    with shared_schema("parley_test") as (_, schema):
        yield schema_url(schema, driver="postgresql+psycopg")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database on each backend the archive supports."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'archive.db'}"
    else:
        yield from postgres_schema_url()


@pytest.fixture
def start_storage(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs the storage process as an operator starts it, on the database at `url`, with further
    settings as environment variables; for the checks that refuse a start (exit 78) before it serves."""

    def start(url: str, **settings: str) -> subprocess.CompletedProcess[str]:
        env = {"PARLEY_DATA_DIR": str(tmp_path / "data"), "PARLEY_DATABASE_URL": url, **settings}
        return run_module("parley_storage", env=env, timeout=120)

    return start


@pytest.fixture
def empty_postgres() -> Iterator[str]:
    """An empty PostgreSQL schema (no Parley tables in it), for what must refuse one."""
    yield from postgres_schema_url()


@pytest.fixture
def archive(database_url: str, tmp_path: Path) -> Iterator[SqlEventArchive]:
    archive = migrated_archive(database_url, tmp_path / "kek.json")
    yield archive
    archive.engine.dispose()


@pytest.fixture
def another_instance(archive: SqlEventArchive, database_url: str, tmp_path: Path) -> Iterator[SqlEventArchive]:
    """A second storage instance beside ``archive``: same database and keyring file, nothing shared in memory."""
    other = migrated_archive(database_url, tmp_path / "kek.json")
    yield other
    other.engine.dispose()
