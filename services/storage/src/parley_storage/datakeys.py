"""Data keys in SQL, wrapped by a KEK: created on first use, shredded on erasure, re-wrapped on rotation.

The keyring keeps the live copy of every data key (see kek.py); the ``data_keys`` rows are
replicas that this module keeps in step with it. Runs inside the caller's transaction, so a new
key's row commits together with the first record sealed under it. Unwrapped keys are cached in
memory for speed; shredding evicts them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, insert, select, update

from parley_storage.kek import KeyEncryptionKeys, Rotation, UnknownKek, data_key_context
from parley_storage.schema import data_keys
from parley_storage.sealing import RecordUnreadable


@dataclass(frozen=True)
class ShreddedKeys:
    owner: str
    key_ids: tuple[str, ...]


class DataKeys:
    def __init__(self, keks: KeyEncryptionKeys) -> None:
        self.keks = keks
        self._cache: dict[str, bytes] = {}
        self._active: dict[str, str] = {}  # owner -> key_id
        self._revoked: set[str] = set()  # erased, here or by another instance (see erasures.py)
        self._erased_owners: set[str] = set()

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
        if self._erased(conn, owner):
            return key_id, self._destroyed_at_birth(conn, owner, key_id, key)
        # Kept in the keyring before the row exists: a rolled-back transaction leaves an unused
        # copy there, never a committed record whose key the keyring lacks.
        wrapped = self.keks.wrap_and_keep(key_id, owner, key)
        conn.execute(
            insert(data_keys).values(
                key_id=key_id,
                owner=owner,
                kek_id=wrapped.kek_id,
                wrapped_key=wrapped.wrapped,
                created_at_ns=time.time_ns(),
            )
        )
        conn.info.setdefault("parley_new_keys", []).append(key_id)
        self._cache[key_id] = key
        self._active[owner] = key_id
        return key_id, key

    def _erased(self, conn: Connection, owner: str) -> bool:
        """The owner's keys were shredded (only an erasure destroys a data key): nothing of theirs
        is readable again."""
        if owner in self._erased_owners:
            return True
        destroyed = data_keys.c.destroyed_at_ns.is_not(None)
        row = conn.execute(select(data_keys.c.key_id).where(data_keys.c.owner == owner, destroyed).limit(1)).first()
        if row is not None:
            self._erased_owners.add(owner)
        return row is not None

    def _destroyed_at_birth(self, conn: Connection, owner: str, key_id: str, key: bytes) -> bytes:
        """A key for one event of an erased owner that reached the archive after the shred (it was
        behind the erasure): the record is sealed with it and the key kept nowhere, so the record is
        as unreadable as the owner's others, and the erasure's deletion from the log finds it as theirs."""
        now = time.time_ns()
        conn.execute(
            insert(data_keys).values(
                key_id=key_id, owner=owner, kek_id=None, wrapped_key=None, created_at_ns=now, destroyed_at_ns=now
            )
        )
        self._revoked.add(key_id)
        return key

    def get(self, conn: Connection, key_id: str) -> bytes:
        if key_id in self._revoked:
            raise RecordUnreadable(f"data key {key_id} was shredded")
        cached = self._cache.get(key_id)
        if cached is not None:
            return cached
        row = conn.execute(select(data_keys).where(data_keys.c.key_id == key_id)).first()
        if row is None or row.wrapped_key is None or key_id in self.keks.shredded_key_ids():
            raise RecordUnreadable(f"data key {key_id} was shredded")
        # The keyring's copy is the live one; the row's may be wrapped under a destroyed KEK.
        kept = self.keks.kept_keys().get(key_id)
        kek_id, wrapped = (kept.kek_id, kept.wrapped) if kept else (row.kek_id, bytes(row.wrapped_key))
        key = self.keks.unwrap(kek_id, wrapped, context=data_key_context(key_id, row.owner))
        self._cache[key_id] = key
        if row.destroyed_at_ns is None:
            self._active[row.owner] = key_id
        return key

    def revoke(self, owner: str, key_ids: Collection[str]) -> None:
        """Forget an erased owner's keys in this process, before or after the keyring destroys them.

        Another instance erases; this one learns it from the bus. Revoked keys are refused even
        while the keyring still holds them, so no cached or re-read copy outlives the decision.
        """
        self._revoked.update(key_ids)
        for key_id in key_ids:
            self._cache.pop(key_id, None)
        self._active.pop(owner, None)
        if key_ids:
            self._erased_owners.add(owner)

    def forget_uncommitted(self, key_ids: list[str]) -> None:
        """After a rollback: drop keys that never reached the database from the cache."""
        for key_id in key_ids:
            self._cache.pop(key_id, None)
        self._active = {owner: kid for owner, kid in self._active.items() if kid not in key_ids}

    def shred(self, conn: Connection, owner: str) -> ShreddedKeys:
        """Destroy every data key of ``owner``, in the keyring and here, and every KEK that ever wrapped it.

        The keyring forgets the keys and moves to a new KEK generation first: from then on no
        copy of them (this database's, a backup's) opens, even if this transaction fails.
        """
        in_sql = conn.execute(
            select(data_keys.c.key_id).where(data_keys.c.owner == owner, data_keys.c.wrapped_key.is_not(None))
        ).scalars()
        kept = (k.key_id for k in self.keks.kept_keys().values() if k.owner == owner)
        key_ids = tuple(sorted({*in_sql, *kept}))
        self._destroy(conn, {owner: key_ids})
        return ShreddedKeys(owner=owner, key_ids=key_ids)

    def _destroy(self, conn: Connection, by_owner: Mapping[str, Collection[str]]) -> None:
        """The keyring forgets these keys under a new KEK generation, the rows follow, and this
        process forgets them too."""
        key_ids = [k for keys in by_owner.values() for k in keys]
        if key_ids:
            self.adopt(conn)  # a key only the database holds must not die with its KEK
            self.keks.rotate(shred=key_ids)
            self.sync(conn)
        for owner, keys in by_owner.items():
            self.revoke(owner, keys)

    def rotate(self, conn: Connection) -> Rotation:
        """A new KEK generation for every data key; earlier KEKs are destroyed, no record is rewritten."""
        self.adopt(conn)
        rotation = self.keks.rotate()
        self.sync(conn)
        return rotation

    def adopt(self, conn: Connection) -> int:
        """Give the keyring a copy of every live data key it lacks (archives from before it kept them)."""
        kept, shredded = self.keks.kept_keys(), self.keks.shredded_key_ids()
        rows = conn.execute(select(data_keys).where(data_keys.c.wrapped_key.is_not(None))).all()
        adopted = 0
        for row in rows:
            if row.key_id in kept or row.key_id in shredded:
                continue
            context = data_key_context(row.key_id, row.owner)
            key = self.keks.unwrap(row.kek_id, bytes(row.wrapped_key), context=context)
            self.keks.wrap_and_keep(row.key_id, row.owner, key)
            adopted += 1
        return adopted

    def shred_recorded_erasures(self, conn: Connection) -> tuple[str, ...]:
        """Shred what the database records as destroyed but the keyring still keeps: a copy of the
        keyring older than an erasure the archive holds (restored with a backup taken after it).
        Left kept, those keys would open the erased user's data in any older backup."""
        kept = self.keks.kept_keys()
        stale: dict[str, list[str]] = {}
        for key_id in sorted(
            conn.execute(select(data_keys.c.key_id).where(data_keys.c.wrapped_key.is_(None))).scalars()
        ):
            if key_id in kept:
                stale.setdefault(kept[key_id].owner, []).append(key_id)
        self._destroy(conn, stale)
        return tuple(sorted(k for keys in stale.values() for k in keys))

    def unopenable(self, conn: Connection) -> dict[str, int]:
        """Live data keys the keyring cannot open, counted by the key generation that wrapped them:
        it holds no copy of its own and lacks that KEK (a keyring older than these keys)."""
        kept = self.keks.kept_keys()
        rows = conn.execute(select(data_keys).where(data_keys.c.wrapped_key.is_not(None))).all()
        missing: dict[str, int] = {}
        for row in rows:
            if row.key_id in kept:
                continue
            try:
                self.keks.unwrap(row.kek_id, bytes(row.wrapped_key), context=data_key_context(row.key_id, row.owner))
            except UnknownKek:
                missing[row.kek_id] = missing.get(row.kek_id, 0) + 1
        return missing

    def sync(self, conn: Connection) -> int:
        """Bring the rows in step with the keyring: its wrapped copies, and its shredded keys destroyed.

        Runs after a rotation or erasure, at start (repairing one interrupted between the keyring
        and the database), and on restore, where the backup's copies are under destroyed KEKs.
        """
        kept, shredded = self.keks.kept_keys(), self.keks.shredded_key_ids()
        rows = conn.execute(
            select(data_keys.c.key_id, data_keys.c.kek_id).where(data_keys.c.wrapped_key.is_not(None))
        ).all()
        changed = 0
        for row in rows:
            if row.key_id in shredded:
                values: dict[str, object] = {"wrapped_key": None, "kek_id": None, "destroyed_at_ns": time.time_ns()}
            elif row.key_id in kept and kept[row.key_id].kek_id != row.kek_id:
                values = {"kek_id": kept[row.key_id].kek_id, "wrapped_key": kept[row.key_id].wrapped}
            else:
                continue
            conn.execute(update(data_keys).where(data_keys.c.key_id == row.key_id).values(**values))
            changed += 1
        return changed
