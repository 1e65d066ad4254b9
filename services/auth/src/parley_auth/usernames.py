"""Username rules: what a name may look like, which names a stranger may not claim, and the
subject-safe key a name is stored under. Free of protobuf, gRPC, NATS and I/O."""

from __future__ import annotations

import hashlib
import re
import unicodedata

from parley_core.errors import InvalidArgument
from parley_core.synthetic import PROBER_NAME_PREFIX, is_prober_name

USERNAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{2,31}$")

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
