"""Data keys in SQL, wrapped by a KEK: created on first use, shredded on erasure, re-wrapped on rotation.

Runs inside the caller's transaction, so a new key commits together with the first record sealed
under it (never a record whose key was lost by a rollback). Unwrapped keys are cached in memory
for speed; shredding evicts them.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, insert, select, update

from parley_storage.kek import KeyEncryptionKeys
from parley_storage.schema import data_keys
from parley_storage.sealing import RecordUnreadable, data_key_aad


@dataclass(frozen=True)
class ShreddedKeys:
    owner: str
    key_ids: tuple[str, ...]


class DataKeys:
    def __init__(self, keks: KeyEncryptionKeys) -> None:
        self.keks = keks
        self._cache: dict[str, bytes] = {}
        self._active: dict[str, str] = {}  # owner -> key_id

    def for_owner(self, conn: Connection, owner: str) -> tuple[str, bytes]:
        """The owner's live data key, created (and wrapped) if there is none yet."""
        key_id = self._active.get(owner)
        if key_id is not None and key_id in self._cache:
            return key_id, self._cache[key_id]
        row = conn.execute(
            select(data_keys.c.key_id)
            .where(data_keys.c.owner == owner, data_keys.c.destroyed_at_ns.is_(None))
            .order_by(data_keys.c.created_at_ns.desc())
            .limit(1)
        ).first()
        if row is not None:
            return row.key_id, self.get(conn, row.key_id)
        key_id = uuid.uuid4().hex
        key = AESGCM.generate_key(bit_length=256)
        kek_id, wrapped = self.keks.wrap(key, context=data_key_aad(key_id, owner))
        conn.execute(
            insert(data_keys).values(
                key_id=key_id, owner=owner, kek_id=kek_id, wrapped_key=wrapped, created_at_ns=time.time_ns()
            )
        )
        # Cached only once the transaction commits would be stricter; a rolled-back key id is never
        # referenced by a committed record, and for_owner re-reads when the id is not in SQL.
        conn.info.setdefault("parley_new_keys", []).append(key_id)
        self._cache[key_id] = key
        self._active[owner] = key_id
        return key_id, key

    def get(self, conn: Connection, key_id: str) -> bytes:
        cached = self._cache.get(key_id)
        if cached is not None:
            return cached
        row = conn.execute(select(data_keys).where(data_keys.c.key_id == key_id)).first()
        if row is None or row.wrapped_key is None or key_id in self.keks.shredded_key_ids():
            raise RecordUnreadable(f"data key {key_id} was shredded")
        key = self.keks.unwrap(row.kek_id, bytes(row.wrapped_key), context=data_key_aad(key_id, row.owner))
        self._cache[key_id] = key
        if row.destroyed_at_ns is None:
            self._active[row.owner] = key_id
        return key

    def forget_uncommitted(self, key_ids: list[str]) -> None:
        """After a rollback: drop keys that never reached the database from the cache."""
        for key_id in key_ids:
            self._cache.pop(key_id, None)
        self._active = {owner: kid for owner, kid in self._active.items() if kid not in key_ids}

    def shred(self, conn: Connection, owner: str) -> ShreddedKeys:
        """Destroy every data key of ``owner``: the wrapped bytes are overwritten, not kept."""
        key_ids = tuple(
            conn.execute(
                select(data_keys.c.key_id).where(data_keys.c.owner == owner, data_keys.c.wrapped_key.is_not(None))
            ).scalars()
        )
        # The tombstone goes first, beside the KEK: even if this transaction failed, or an old
        # backup still holds the wrapped key, the key is never unwrapped again.
        self.keks.tombstone(key_ids)
        if key_ids:
            conn.execute(
                update(data_keys)
                .where(data_keys.c.key_id.in_(key_ids))
                .values(wrapped_key=None, kek_id=None, destroyed_at_ns=time.time_ns())
            )
        for key_id in key_ids:
            self._cache.pop(key_id, None)
        self._active.pop(owner, None)
        return ShreddedKeys(owner=owner, key_ids=key_ids)

    def apply_tombstones(self, conn: Connection) -> int:
        """Destroy, in a restored database, the wrapped keys shredded since its backup was taken."""
        shredded = sorted(self.keks.shredded_key_ids())
        if not shredded:
            return 0
        result = conn.execute(
            update(data_keys)
            .where(data_keys.c.key_id.in_(shredded), data_keys.c.wrapped_key.is_not(None))
            .values(wrapped_key=None, kek_id=None, destroyed_at_ns=time.time_ns())
        )
        return int(result.rowcount or 0)

    def rewrap_all(self, conn: Connection) -> int:
        """Re-wrap every live data key under the current KEK; sealed records are not touched."""
        rows = conn.execute(
            select(data_keys).where(data_keys.c.wrapped_key.is_not(None), data_keys.c.kek_id != self.keks.current_id)
        ).all()
        for row in rows:
            context = data_key_aad(row.key_id, row.owner)
            key = self.keks.unwrap(row.kek_id, bytes(row.wrapped_key), context=context)
            kek_id, wrapped = self.keks.wrap(key, context=context)
            conn.execute(
                update(data_keys).where(data_keys.c.key_id == row.key_id).values(kek_id=kek_id, wrapped_key=wrapped)
            )
        return len(rows)

    def keks_in_use(self, conn: Connection) -> set[str]:
        return set(conn.execute(select(data_keys.c.kek_id).where(data_keys.c.kek_id.is_not(None)).distinct()).scalars())
