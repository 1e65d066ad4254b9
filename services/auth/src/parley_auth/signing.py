"""Access tokens: EdDSA (Ed25519) JWTs through PyJWT, with a key id per signing key."""

from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from parley_core.files import ensure_private_dir, write_private_file
from parley_core.tokens import ALGORITHM, AUDIENCE, ISSUER

ACCESS_TOKEN_SECONDS = 15 * 60


class TokenIssuer:
    def __init__(self, private_key: Ed25519PrivateKey, *, lifetime_s: int = ACCESS_TOKEN_SECONDS) -> None:
        self._key = private_key
        self.lifetime_s = lifetime_s
        self.public_key = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id = hashlib.sha256(self.public_key).hexdigest()[:16]

    @classmethod
    def load(cls, path: Path, *, lifetime_s: int = ACCESS_TOKEN_SECONDS) -> TokenIssuer:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 private key")
        return cls(key, lifetime_s=lifetime_s)

    @classmethod
    def load_or_create(cls, path: Path, *, lifetime_s: int = ACCESS_TOKEN_SECONDS) -> TokenIssuer:
        if path.exists():
            return cls.load(path, lifetime_s=lifetime_s)
        issuer = cls.generate(lifetime_s=lifetime_s)
        issuer.save(path)
        return issuer

    @classmethod
    def generate(cls, *, lifetime_s: int = ACCESS_TOKEN_SECONDS) -> TokenIssuer:
        """A fresh key, in memory until saved."""
        return cls(Ed25519PrivateKey.generate(), lifetime_s=lifetime_s)

    def private_der(self) -> bytes:
        """The private key as PKCS#8 DER, to be sealed (never stored or sent in the clear)."""
        return self._key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @classmethod
    def from_der(cls, der: bytes, *, lifetime_s: int = ACCESS_TOKEN_SECONDS) -> TokenIssuer:
        key = serialization.load_der_private_key(der, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("not an Ed25519 private key")
        return cls(key, lifetime_s=lifetime_s)

    def save(self, path: Path) -> None:
        """Written whole or not at all (staged, then renamed over `path`), readable by auth only."""
        pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        ensure_private_dir(path.parent)
        staged = path.with_suffix(".new")
        staged.unlink(missing_ok=True)
        write_private_file(staged, pem)
        staged.replace(path)

    def issue(
        self, *, user_id: str, username: str, role: str, session_id: str = "", mfa: bool = False
    ) -> tuple[str, int]:
        """A signed access token; without a session id it cannot be revoked by session (only by
        disabling the account), which is what tools that mint a token for a test get."""
        now = int(time.time())
        expires = now + self.lifetime_s
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": user_id,
            "name": username,
            "role": role,
            "sid": session_id,
            # RFC 8176 authentication methods: every service reads it for roles that need MFA.
            "amr": ["pwd", "otp"] if mfa else ["pwd"],
            "iat": now,
            "exp": expires,
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self.key_id})
        return token, expires
