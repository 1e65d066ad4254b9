"""The secrets auth writes into its events, sealed with AES-256-GCM under a key only auth reads.

Every service reads the AUTH stream (for roles, sessions and devices); the secrets in it must
open for auth alone: password hashes, TOTP secrets, recovery-code and refresh-token digests.
Each sealed value is bound as associated data to what it is (which field) and whose (the user or
session), so a value copied into another event or account does not open. No I/O beyond reading
or creating the key file.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from parley_core.files import create_private_file, ensure_private_dir

NONCE_BYTES = 12
# What a sealed field is; part of its associated data.
PASSWORD_HASH = "password_hash"  # noqa: S105 - a field name, not a password
RECOVERY_CODES = "recovery_codes"  # a whole set: 32-byte digests, concatenated
RECOVERY_CODE = "recovery_code"  # the digest of one spent code
REFRESH_TOKEN = "refresh_token"  # noqa: S105 - a field name: a refresh token's digest, current or spent
DIGEST_BYTES = 32
# What a login counts failures under when the name it was given belongs to no account.
UNKNOWN_NAME_PREFIX = "unknown-name:"


class SealedFieldUnreadable(Exception):
    """A sealed value that does not open: another key sealed it, or it was moved or altered."""


class SecretSealer:
    """AES-256-GCM under the key in auth's secrets folder."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        # A key of its own for name digests, derived from the sealing key (never used to seal).
        derive = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"parley-auth-unknown-name-v1")
        self._name_key = derive.derive(key)

    def unknown_name(self, typed: str) -> str:
        """What a failed login records for a name that belongs to no account: a keyed digest,
        the same for the same text (so failures still count and lock), that nobody without this
        key can reverse. People type their password into the name field; the AUTH stream every
        service reads, the audit trail and the archive must not receive it."""
        mac = hmac.HMAC(self._name_key, hashes.SHA256())
        mac.update(typed.encode())
        return UNKNOWN_NAME_PREFIX + mac.finalize()[:16].hex()

    @classmethod
    def load_or_create(cls, path: Path) -> SecretSealer:
        """The key at `path`, made on first use; of auth instances starting at once on a new
        folder, the first one's key is kept and the others read it."""
        if not path.exists():
            ensure_private_dir(path.parent)
            create_private_file(path, AESGCM.generate_key(bit_length=256))
        return cls(path.read_bytes())

    def seal(self, secret: bytes, user_id: str) -> bytes:
        """A TOTP secret, bound to its user (associated data as first written: the user id)."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, secret, user_id.encode())

    def open(self, sealed: bytes, user_id: str) -> bytes:
        return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], user_id.encode())

    def seal_field(self, value: bytes, *, field: str, owner: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, value, _field_aad(field, owner))

    def open_field(self, sealed: bytes, *, field: str, owner: str) -> bytes:
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _field_aad(field, owner))
        except (InvalidTag, ValueError) as exc:
            raise SealedFieldUnreadable(f"a sealed {field} of {owner} does not open with this key") from exc


def _field_aad(field: str, owner: str) -> bytes:
    # A NUL cannot occur in a user id, so these never equal a TOTP secret's associated data.
    return b"\x00".join((b"parley-auth-field-v1", field.encode(), owner.encode()))


def digests(joined: bytes) -> set[bytes]:
    """A set of 32-byte digests sealed as one value (recovery codes)."""
    return {joined[i : i + DIGEST_BYTES] for i in range(0, len(joined) - DIGEST_BYTES + 1, DIGEST_BYTES)}
