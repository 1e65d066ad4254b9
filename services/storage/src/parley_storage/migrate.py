"""Schema migrations at start: bring the database up to this code's schema, or refuse to run.

Refusing matters in a rollout: an older storage instance must not write into a schema a newer
one has changed under it (Synapse does the same with its numbered deltas).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect

from parley_storage.datakeys import DataKeys

MIGRATIONS = Path(__file__).parent / "migrations"


class SchemaNewerThanCode(Exception):
    """The database was migrated by a newer parley-storage than this one."""


class UnversionedDatabase(Exception):
    """The database has archive tables but no migration history (made by a pre-Alembic build)."""


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def _refuse_unknown(conn: Connection, script: ScriptDirectory) -> None:
    known = {revision.revision for revision in script.walk_revisions()}
    current = set(MigrationContext.configure(conn).get_current_heads())
    unknown = sorted(current - known)
    if unknown:
        raise SchemaNewerThanCode(
            f"the database schema is at revision {', '.join(unknown)}, which this parley-storage "
            f"(schema head {script.get_current_head()}) does not know: it was migrated by a newer "
            "version. Run that version, or restore a backup taken with this one."
        )
    if not current and "events" in inspect(conn).get_table_names():
        raise UnversionedDatabase(
            "the database has an archive without migration history (created by a build before "
            "schema migrations and encryption at rest). Its data cannot be adopted in place: for a "
            "development data folder run `make clean-data` (removing only storage/ would lose the "
            "history the durable consumers have already passed)"
        )


def check_schema_compatible(engine: Engine) -> None:
    """Raise unless this code can run on the database (before anything else starts)."""
    with engine.connect() as conn:
        _refuse_unknown(conn, ScriptDirectory.from_config(_config()))


def upgrade_to_head(engine: Engine, keys: DataKeys | None = None) -> str:
    """Apply every migration not yet applied, in one transaction; returns the revision reached.

    ``keys`` opens archived events for a migration that fills a table from them (0004); an empty
    database needs none."""
    config = _config()
    with engine.begin() as conn:
        _refuse_unknown(conn, ScriptDirectory.from_config(config))
        config.attributes["connection"] = conn
        config.attributes["keys"] = keys
        command.upgrade(config, "head")
    return head_revision()
