"""Key bookkeeping: rotating the key-encryption key, reconciling the keyring with the rows at
start, and crypto-shredding one user's data keys."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, func, select

from parley_storage.archive.db import ArchiveDb
from parley_storage.datakeys import ShreddedKeys
from parley_storage.kek import Rotation
from parley_storage.schema import data_keys, events
from parley_storage.sealing import user_owner


class KeyBookkeeping:
    def __init__(self, db: ArchiveDb) -> None:
        self._db = db

    async def rotate_kek(self) -> Rotation:
        return await self._db.run("rotate_kek", self._db.keys.rotate)

    async def reconcile_data_keys(self) -> int:
        """At start: the keyring holds every live data key and no destroyed one, and the rows match
        it (see DataKeys.sync and shred_recorded_erasures)."""
        keys = self._db.keys

        def work(conn: Connection) -> int:
            adopted = keys.adopt(conn)
            return adopted + len(keys.shred_recorded_erasures(conn)) + keys.sync(conn)

        return await self._db.run("reconcile_data_keys", work)

    async def shred_user(self, user_id: str) -> ShreddedKeys:
        """Crypto-shred one user: their data keys are destroyed, their records stay as unreadable bytes."""
        return await self._db.run("shred_user", lambda conn: self._db.keys.shred(conn, user_owner(user_id)))

    async def live_user_keys(self, user_id: str) -> list[str]:
        def work(conn: Connection) -> list[str]:
            query = select(data_keys.c.key_id).where(
                data_keys.c.owner == user_owner(user_id), data_keys.c.wrapped_key.is_not(None)
            )
            return list(conn.execute(query.order_by(data_keys.c.key_id)).scalars())

        return await self._db.run("live_user_keys", work)

    async def count_events_under(self, key_ids: Sequence[str]) -> int:
        def work(conn: Connection) -> int:
            query = select(func.count()).select_from(events).where(events.c.key_id.in_(list(key_ids)))
            return int(conn.execute(query).scalar_one())

        return await self._db.run("count_events_under", work)
