"""The archive's database, shared by every part of the archive: the engine, one named
transaction per operation, and opening a sealed event row."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.message import DecodeError
from parley.common.v1.envelope_pb2 import EventEnvelope
from sqlalchemy import Connection, Engine, Row, create_engine, event, insert
from sqlalchemy.dialects import postgresql, sqlite

from parley_core import telemetry
from parley_core.envelope import decode
from parley_storage.archive.records import EXPIRED, StoredEvent
from parley_storage.datakeys import DataKeys
from parley_storage.sealing import RecordUnreadable, open_sealed, row_aad

# The archive's logger and tracer keep the name they had when the archive was one module.
_NAME = "parley_storage.archive"
log = logging.getLogger(_NAME)
T = TypeVar("T")
NEW_KEYS = "parley_new_keys"  # conn.info: data keys made in this transaction (DataKeys.for_owner)
IN_CHUNK = 500  # values per SQL IN list


def open_engine(url: str) -> Engine:
    # A ping before each use finds a server connection that died; a SQLite file has none to
    # lose, and the ping was a statement more per archived batch.
    engine = create_engine(url, pool_pre_ping=not url.startswith("sqlite"))
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if database and database != ":memory:" and Path(database).parent.is_dir():
            # Made 0600 before SQLite makes it, whatever the umask: its -wal and -shm take its mode.
            os.close(os.open(database, os.O_CREAT | os.O_RDWR, 0o600))

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
            cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
            # WAL lets history reads run while a batch is written; FULL sync makes a commit durable.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.close()

    return engine


class ArchiveDb:
    """The engine and the data keys every part of the archive works through."""

    def __init__(self, engine: Engine, keys: DataKeys) -> None:
        self.engine = engine
        self.keys = keys

    async def run(self, name: str, work: Callable[[Connection], T]) -> T:
        """Run one named transaction in a worker thread; the name shows in traces and slow logs."""

        def transaction() -> T:
            started = time.perf_counter()
            with self.engine.connect() as conn:
                try:
                    with conn.begin():
                        result = work(conn)
                except BaseException:
                    self.keys.forget_uncommitted(conn.info.pop(NEW_KEYS, []))
                    raise
                conn.info.pop(NEW_KEYS, None)
            elapsed = time.perf_counter() - started
            if elapsed > 0.5:
                log.warning("slow transaction", extra={"transaction": name, "seconds": round(elapsed, 3)})
            return result

        with telemetry.internal_span(_NAME, f"sql {name}"):
            return await asyncio.to_thread(transaction)

    def open_row(self, conn: Connection, row: Row[Any]) -> EventEnvelope | None:
        """The event's envelope, or None when its data key was shredded or a redaction or retention removed it."""
        if row.key_id == EXPIRED:
            return None
        try:
            key = self.keys.get(conn, row.key_id)
        except RecordUnreadable:
            return None
        return decode(open_sealed(key, bytes(row.envelope), row_aad(row)))

    def stored_event(self, conn: Connection, row: Row[Any]) -> StoredEvent:
        """The row as stored, its envelope opened where it can be: a damaged row is reported as
        such (by position and aggregate version) instead of failing the whole read."""
        unreadable = False
        try:
            envelope = self.open_row(conn, row)
        except (RecordUnreadable, DecodeError):
            envelope, unreadable = None, True
        return StoredEvent(
            stream=row.stream,
            stream_seq=row.stream_seq,
            subject=row.subject,
            event_id=row.event_id,
            event_type=row.event_type,
            aggregate_type=row.aggregate_type,
            aggregate_id=row.aggregate_id,
            aggregate_version=row.aggregate_version,
            occurred_at_ns=row.occurred_at_ns,
            actor=row.actor,
            envelope=envelope,
            unreadable=unreadable,
        )


@functools.cache
def insert_ignoring(dialect: str, table: Any) -> Any:
    """An insert that skips a row whose key exists (a redelivered event's projection), built once."""
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return insert(table)


def chunks(values: Sequence[Any], size: int = IN_CHUNK) -> list[Sequence[Any]]:
    """Bounded IN lists: SQLite and PostgreSQL take them, however long a run is."""
    return [values[i : i + size] for i in range(0, len(values), size)]
