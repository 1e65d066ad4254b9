"""When to rotate the access-token signing key and when a replaced key may be retired; no I/O.

A key is replaced by publishing its successor (SigningKeyPublished.replaces_key_id) on the
replaced key's own subject, at that subject's last sequence, so that of several auth instances
rotating at the same moment only one succeeds. The replaced key keeps verifying until every
token it can have signed has expired: tokens are signed with it until the (newest) successor is
in use, a moment after its publication, and live `token_lifetime_s` at most; RETIRE_MARGIN_S
covers that moment and the rounding of `iat`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

RETIRE_MARGIN_S = 5.0


@dataclass
class SigningKeyState:
    published_at: float
    replaces: str = ""  # the key this one took over from, if any
    retired: bool = False
    # Newest event on this key's subject (parley.auth.key.<id>), for the optimistic append of
    # its successor.
    last_seq: int = 0
    version: int = 0


def replaced_at(keys: Mapping[str, SigningKeyState], key_id: str) -> float | None:
    """When `key_id`'s newest successor was published, if it has one (a second successor only
    follows an instance that lost the first one's private key in a crash)."""
    times = [k.published_at for k in keys.values() if k.replaces == key_id]
    return max(times) if times else None


def key_in_use(keys: Mapping[str, SigningKeyState]) -> str | None:
    """The key the log says signs now: the newest published one that is neither replaced nor
    retired (None on a fresh installation)."""
    candidates = [
        (state.published_at, key_id)
        for key_id, state in keys.items()
        if not state.retired and replaced_at(keys, key_id) is None
    ]
    return max(candidates)[1] if candidates else None


@dataclass(frozen=True)
class KeySchedule:
    rotation_s: float  # 0: never rotate on a schedule
    token_lifetime_s: float

    def rotate_at(self, current: SigningKeyState) -> float | None:
        return current.published_at + self.rotation_s if self.rotation_s > 0 else None

    def retire_at(self, keys: Mapping[str, SigningKeyState], key_id: str) -> float | None:
        state = keys.get(key_id)
        if state is None or state.retired or (since := replaced_at(keys, key_id)) is None:
            return None
        return since + self.token_lifetime_s + RETIRE_MARGIN_S

    def retirable(self, keys: Mapping[str, SigningKeyState], *, current_key_id: str, now: float) -> list[str]:
        """Replaced keys whose every token has expired (never the key in use)."""
        return [
            key_id
            for key_id in keys
            if key_id != current_key_id and (at := self.retire_at(keys, key_id)) is not None and at <= now
        ]

    def next_due(self, keys: Mapping[str, SigningKeyState], *, current_key_id: str) -> float | None:
        """The earliest time something is due: the current key's rotation or a retirement."""
        times = [self.retire_at(keys, key_id) for key_id in keys if key_id != current_key_id]
        if (current := keys.get(current_key_id)) is not None:
            times.append(self.rotate_at(current))
        due = [t for t in times if t is not None]
        return min(due) if due else None
