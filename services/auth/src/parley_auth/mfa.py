"""TOTP (RFC 6238) through `cryptography`'s twofactor module, and recovery codes; no I/O.

Secrets are sealed before they reach an event (parley_auth.sealing). A code is checked against the current
time step and one step either side (clock drift); the step it matched is returned so the
caller can record it and never accept that step (or an earlier one) again: a code is good once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP

ISSUER = "Parley"
DIGITS = 6
STEP_S = 30
SECRET_BYTES = 20  # 160 bits, as RFC 4226 recommends
DRIFT_STEPS = 1
RECOVERY_CODES = 10


def new_secret() -> bytes:
    return os.urandom(SECRET_BYTES)


def _totp(secret: bytes) -> TOTP:
    # SHA-1 is what every authenticator app implements for RFC 6238; HMAC-SHA-1 is not broken.
    return TOTP(secret, DIGITS, SHA1(), STEP_S, enforce_key_length=True)  # noqa: S303 - RFC 6238 default


def provisioning_uri(secret: bytes, username: str) -> str:
    return _totp(secret).get_provisioning_uri(username, ISSUER)


def secret_base32(secret: bytes) -> str:
    return base64.b32encode(secret).decode().rstrip("=")


def code_at(secret: bytes, unix_time: float) -> str:
    return _totp(secret).generate(int(unix_time)).decode()


def matching_step(secret: bytes, code: str, unix_time: float, *, after_step: int) -> int | None:
    """The time step `code` belongs to, if it is within the drift window and newer than
    `after_step` (the last step accepted for this user)."""
    if len(code) != DIGITS or not code.isdigit():
        return None
    now_step = int(unix_time) // STEP_S
    totp = _totp(secret)
    for step in range(now_step - DRIFT_STEPS, now_step + DRIFT_STEPS + 1):
        expected = totp.generate(step * STEP_S)
        if hmac.compare_digest(expected, code.encode()) and step > after_step:
            return step
    return None


def new_recovery_codes() -> list[str]:
    """Ten codes of 80 random bits each, as xxxx-xxxx-xxxx-xxxx (base32)."""
    codes = []
    for _ in range(RECOVERY_CODES):
        raw = base64.b32encode(secrets.token_bytes(10)).decode().lower()
        codes.append("-".join(raw[i : i + 4] for i in range(0, 16, 4)))
    return codes


def recovery_digest(code: str) -> bytes:
    """Codes carry 80 random bits, so a plain SHA-256 of the normalised code cannot be reversed."""
    return hashlib.sha256(code.strip().lower().replace(" ", "").encode()).digest()


@dataclass
class MfaState:
    """One user's MFA, as the AUTH stream tells it."""

    pending_secret: bytes = b""  # sealed
    secret: bytes = b""  # sealed; set once enrolment is confirmed
    last_step: int = 0
    recovery: set[bytes] = field(default_factory=set)

    @property
    def enrolled(self) -> bool:
        return bool(self.secret)
