"""Alembic environment: migrations always run on the connection parley_storage.migrate hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("run migrations through parley_storage.migrate, which passes a connection")

# render_as_batch lets SQLite alter tables (it has no ALTER COLUMN); PostgreSQL ignores it.
context.configure(connection=connection, target_metadata=None, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
