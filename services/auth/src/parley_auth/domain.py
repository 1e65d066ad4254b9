"""Accounts: username rules and the directory projection, free of gRPC, NATS and protobuf I/O."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

from parley_core.errors import InvalidArgument

USERNAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{2,31}$")
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024
DEFAULT_ROLE = "member"


def normalize_username(raw: str) -> str:
    """NFKC then case-fold, so look-alike spellings of one name collide."""
    name = unicodedata.normalize("NFKC", raw).casefold().strip()
    if not USERNAME_PATTERN.match(name):
        raise InvalidArgument(
            "username must be 3-32 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def username_key(normalized: str) -> str:
    """Subject-safe key of a normalized username."""
    return hashlib.sha256(normalized.encode()).hexdigest()


def check_password_policy(password: str, username: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidArgument(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidArgument(f"password must be at most {MAX_PASSWORD_LENGTH} characters")
    if username in password.casefold():
        raise InvalidArgument("password must not contain the username")


@dataclass(frozen=True)
class Account:
    user_id: str
    username: str
    password_hash: str
    role: str


class AccountDirectory:
    """Accounts by normalized username, rebuilt from UserRegistered events."""

    def __init__(self) -> None:
        self._by_name: dict[str, Account] = {}

    def add(self, account: Account) -> None:
        self._by_name[account.username] = account

    def find(self, username: str) -> Account | None:
        return self._by_name.get(username)
