"""Operator tokens for tests that stand in for auth's role management.

A test that drives an operator-only API (the patch registry's publish, plan and approve) without
running auth publishes a signing key on the AUTH stream, exactly as auth does, and signs tokens
with it; every service then verifies them as it verifies auth's own.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from parley.auth.v1.events_pb2 import SigningKeyPublished

from parley_core.bus import EventBus
from parley_core.envelope import NewEvent
from parley_core.tokens import AUDIENCE, ISSUER
from parley_core.topology import signing_key_subject

TOKEN_LIFETIME_S = 3600


@dataclass(frozen=True)
class OperatorSigner:
    key_id: str = "test-rbac"
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    async def publish(self, bus: EventBus) -> None:
        """Announce the public key on the AUTH stream, where services learn auth's keys."""
        public_key = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        await bus.append(
            signing_key_subject(self.key_id),
            NewEvent(
                aggregate_type="key",
                aggregate_id=self.key_id,
                actor="test",
                payload=SigningKeyPublished(key_id=self.key_id, algorithm="EdDSA", public_key=public_key),
            ),
            aggregate_version=1,
            expected_last_subject_seq=None,
        )

    def metadata(self, user: str, role: str = "operator") -> tuple[tuple[str, str]]:
        """gRPC call metadata carrying a fresh token of `user` with `role`."""
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": user,
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": now + TOKEN_LIFETIME_S,
            "role": role,
            "name": user,
        }
        token = jwt.encode(claims, self.key, algorithm="EdDSA", headers={"kid": self.key_id})
        return (("authorization", f"Bearer {token}"),)
