"""A schema of its own on the shared PostgreSQL test server (127.0.0.1:5432, trust, database
`test`), dropped afterwards, so a test neither sees nor leaves data. Where no server answers,
the test is skipped, saying why. (parley_testing.postgres starts a private server instead, for
tests that stop their database.)"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import URL, create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

SHARED_SERVER = URL.create("postgresql", username="postgres", host="127.0.0.1", port=5432, database="test")


@contextlib.contextmanager
def shared_schema(prefix: str) -> Iterator[tuple[Engine, str]]:
    """The server's administrative engine (AUTOCOMMIT) and a new schema's name, `prefix_<random>`."""
    admin = create_engine(
        SHARED_SERVER.set(drivername="postgresql+psycopg").update_query_dict({"connect_timeout": "5"}),
        isolation_level="AUTOCOMMIT",
    )
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        pytest.skip(f"no PostgreSQL test server on 127.0.0.1:5432: {str(exc.orig or exc).strip().splitlines()[0]}")
    try:
        yield admin, name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


def schema_url(name: str, *, driver: str = "postgresql") -> str:
    """The shared server with schema `name` as the search path: a plain postgresql:// URL, as an
    operator writes it (the platform picks the driver), unless a driver is named."""
    url = SHARED_SERVER.set(drivername=driver).update_query_dict({"options": f"-csearch_path={name}"})
    return url.render_as_string(hide_password=False)
