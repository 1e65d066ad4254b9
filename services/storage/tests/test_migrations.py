"""Alembic migrations on SQLite and PostgreSQL: up from empty, idempotent, and the refusals."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest
from sqlalchemy import inspect, text

from parley_storage.archive import open_engine
from parley_storage.migrate import (
    SchemaNewerThanCode,
    UnversionedDatabase,
    check_schema_compatible,
    head_revision,
    upgrade_to_head,
)
from parley_storage.schema import metadata


def test_migrates_an_empty_database_to_the_schema_the_code_uses(database_url: str) -> None:
    engine = open_engine(database_url)
    try:
        assert upgrade_to_head(engine) == head_revision()
        with engine.connect() as conn:
            found = inspect(conn)
            for table in metadata.sorted_tables:
                columns = {c["name"] for c in found.get_columns(table.name)}
                assert columns == {c.name for c in table.columns}, table.name
            indexes = {i["name"] for i in found.get_indexes("events")}
            assert {"ix_events_aggregate", "ix_events_key"} <= indexes
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == head_revision()
        # A second start changes nothing and does not fail.
        assert upgrade_to_head(engine) == head_revision()
        check_schema_compatible(engine)
    finally:
        engine.dispose()


def test_refuses_a_database_migrated_by_a_newer_version(database_url: str) -> None:
    engine = open_engine(database_url)
    try:
        upgrade_to_head(engine)
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '9001'"))
        with pytest.raises(SchemaNewerThanCode, match=r"9001.*newer"):
            upgrade_to_head(engine)
        with pytest.raises(SchemaNewerThanCode):
            check_schema_compatible(engine)
        with engine.connect() as conn:  # and it left the database as it found it
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "9001"
    finally:
        engine.dispose()


def test_refuses_an_archive_without_migration_history(database_url: str) -> None:
    engine = open_engine(database_url)
    try:
        metadata.create_all(engine)
        with pytest.raises(UnversionedDatabase, match="without migration history"):
            upgrade_to_head(engine)
        with engine.connect() as conn:
            assert "alembic_version" not in inspect(conn).get_table_names()
    finally:
        engine.dispose()


def test_service_process_exits_with_a_clear_error_on_a_newer_schema(
    tmp_path: Path, start_storage: Callable[..., CompletedProcess[str]]
) -> None:
    url = f"sqlite:///{tmp_path / 'archive.db'}"
    engine = open_engine(url)
    upgrade_to_head(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9001'"))
    engine.dispose()

    result = start_storage(url)

    assert result.returncode == 78
    assert "refusing to start" in result.stderr
    assert "9001" in result.stderr
    assert "Traceback" not in result.stderr
