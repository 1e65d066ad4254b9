"""Accounts: username and password rules and the directory projection, free of gRPC, NATS and I/O."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

from zxcvbn import zxcvbn

from parley_core.errors import InvalidArgument
from parley_core.rbac import DEFAULT_ROLE, ROLES
from parley_core.synthetic import PROBER_NAME_PREFIX, is_prober_name

USERNAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{2,31}$")
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024
# zxcvbn scores 0..4; 3 is "safely unguessable: moderate protection from offline attacks".
MIN_PASSWORD_SCORE = 3
# zxcvbn's cost grows with length: it scores at most its default of 72 characters (and refuses more).
SCORED_PREFIX = 72

# Names a stranger must not pick for themselves (impersonating staff or the system); an
# administrator may still create them.
RESERVED_USERNAMES = frozenset(
    {
        "admin", "administrator", "root", "system", "platform", "parley", "security", "support",
        "helpdesk", "owner", "operator", "moderator", "auditor", "postmaster", "abuse", "noreply",
    }
)  # fmt: skip
# One answer for every name that cannot be had (taken, a look-alike of a taken one, reserved):
# which of these it is would tell a stranger something.
USERNAME_UNAVAILABLE = "that username is not available; choose another"

__all__ = ["DEFAULT_ROLE"]


def normalize_username(raw: str) -> str:
    """NFKC then case-fold, so look-alike spellings of one name collide."""
    name = unicodedata.normalize("NFKC", raw).casefold().strip()
    if not USERNAME_PATTERN.match(name):
        raise InvalidArgument(
            "username must be 3-32 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def is_reserved(normalized: str) -> bool:
    return normalized in RESERVED_USERNAMES


def check_name_claimable(normalized: str, *, by_platform: bool) -> None:
    """Only the platform identity names an account in the roll-out probers' range: the detector
    takes such an account's sends for synthetic (parley_core.synthetic). The range is a fixed,
    documented rule, so saying so tells a stranger nothing about who has an account."""
    if is_prober_name(normalized) and not by_platform:
        raise InvalidArgument(
            f"usernames beginning with {PROBER_NAME_PREFIX!r} are reserved for the platform's roll-out "
            "probers; choose another"
        )


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
    result = zxcvbn(password[:SCORED_PREFIX], user_inputs=[username])
    if int(result["score"]) < MIN_PASSWORD_SCORE:
        hint = str(result.get("feedback", {}).get("warning") or "it is too easy to guess")
        raise InvalidArgument(f"password is too weak ({hint.rstrip('.')}); use a longer passphrase of unrelated words")


def validate_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidArgument(f"role must be one of: {', '.join(ROLES)}")
    return role


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

    def add(self, account: Account) -> None:
        self._by_name[account.username] = account
        self._by_id[account.user_id] = account

    def forget(self, user_id: str) -> None:
        """An erased account: gone from both indexes, as a rebuild without its events has it."""
        if (account := self._by_id.pop(user_id, None)) is not None:
            self._by_name.pop(account.username, None)

    def find(self, username: str) -> Account | None:
        return self._by_name.get(username)

    def by_id(self, user_id: str) -> Account | None:
        return self._by_id.get(user_id)
