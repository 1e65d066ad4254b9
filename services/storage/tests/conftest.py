"""The archive under test, on every backend it supports: the same contract runs on each."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import URL, create_engine, text
from sqlalchemy.exc import OperationalError

from parley_storage.archive import SqlEventArchive, open_engine

POSTGRES = URL.create("postgresql+psycopg", username="postgres", host="127.0.0.1", port=5432, database="test")


def _sqlite_archive(tmp_path: Path) -> Iterator[SqlEventArchive]:
    archive = SqlEventArchive(open_engine(f"sqlite:///{tmp_path / 'archive.db'}"))
    archive.create_schema()
    yield archive
    archive.engine.dispose()


def _postgres_archive() -> Iterator[SqlEventArchive]:
    """A schema of its own for each test, dropped afterwards, so runs neither see nor leave data."""
    admin = create_engine(POSTGRES.update_query_dict({"connect_timeout": "5"}), isolation_level="AUTOCOMMIT")
    schema = f"parley_test_{uuid.uuid4().hex[:16]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except OperationalError as exc:
        admin.dispose()
        reason = str(exc.orig or exc).strip().splitlines()[0]
        pytest.skip(f"PostgreSQL not reachable on 127.0.0.1:5432: {reason}")
    url = POSTGRES.update_query_dict({"options": f"-csearch_path={schema}"})
    archive = SqlEventArchive(open_engine(url.render_as_string(hide_password=False)))
    try:
        archive.create_schema()
        yield archive
    finally:
        archive.engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def archive(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlEventArchive]:
    if request.param == "sqlite":
        yield from _sqlite_archive(tmp_path)
    else:
        yield from _postgres_archive()
