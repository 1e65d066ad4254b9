"""The account aggregate and the directory of accounts by name and by id, rebuilt from the AUTH
stream (apply_accounts.py applies the events). Free of protobuf, gRPC, NATS and I/O."""

from __future__ import annotations

from dataclasses import dataclass

from parley_core.synthetic import is_prober_name


@dataclass
class Account:
    user_id: str
    username: str
    password_hash: str
    role: str
    disabled: bool = False
    # Newest event on parley.auth.user.<id>, for optimistic appends to the user aggregate.
    user_seq: int = 0
    user_version: int = 0


class AccountDirectory:
    """Accounts by normalized username and by id, rebuilt from the AUTH stream."""

    def __init__(self) -> None:
        self._by_name: dict[str, Account] = {}
        self._by_id: dict[str, Account] = {}
        self._probers: set[str] = set()  # ids of the accounts named as roll-out probers

    def add(self, account: Account) -> None:
        self._by_name[account.username] = account
        self._by_id[account.user_id] = account
        if is_prober_name(account.username):
            self._probers.add(account.user_id)

    def forget(self, user_id: str) -> None:
        """An erased account: gone from both indexes, as a rebuild without its events has it."""
        if (account := self._by_id.pop(user_id, None)) is not None:
            self._by_name.pop(account.username, None)
        self._probers.discard(user_id)

    def probers(self) -> int:
        """How many accounts bear a roll-out prober's name (parley_core.synthetic)."""
        return len(self._probers)

    def find(self, username: str) -> Account | None:
        return self._by_name.get(username)

    def by_id(self, user_id: str) -> Account | None:
        return self._by_id.get(user_id)
