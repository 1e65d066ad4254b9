"""argon2id password hashing, off the event loop so a login storm does not stall other calls."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# OWASP's minimum for argon2id: 19 MiB memory, 2 iterations, 1 lane.
HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)

# Verified when the account does not exist, so a wrong username costs as long as a wrong password.
_DUMMY_HASH = HASHER.hash("parley-timing-equaliser")


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(HASHER.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    """False without a hash (no such account, or one whose sealed hash does not open), after as
    long as a real check takes."""

    def check() -> bool:
        try:
            return HASHER.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(check)


def needs_rehash(password_hash: str) -> bool:
    """True when the hash was made with other parameters than HASHER's (e.g. before a raise)."""
    try:
        return HASHER.check_needs_rehash(password_hash)
    except InvalidHashError:
        return False
