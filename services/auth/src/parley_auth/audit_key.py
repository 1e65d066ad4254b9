"""Auth's audit key: the Ed25519 key that signs audit records, and nothing else.

Kept apart from the access-token signing key (which rotates, and whose compromise should forge
tokens, not history), in secrets/auth-audit-key.pem; its public half is published on the AUTH
stream (AuditKeyPublished) for `parley audit verify`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from parley_core.signing_keys import load_or_create_ed25519_key

ALGORITHM = "Ed25519"


class AuditSigner:
    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id = audit_key_id(self.public_key)

    @classmethod
    def load_or_create(cls, path: Path) -> AuditSigner:
        """The key at `path`, made on first use (of instances starting at once, the first one's)."""
        return cls(load_or_create_ed25519_key(path))

    def sign(self, record_hash: bytes) -> bytes:
        return self._key.sign(record_hash)


def audit_key_id(public_key: bytes) -> str:
    # Prefixed so an audit key's id can never be taken for an access-token key's.
    return "audit-" + hashlib.sha256(public_key).hexdigest()[:16]
