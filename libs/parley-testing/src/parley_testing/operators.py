"""Operator tokens for tests, until auth hands out the operator role itself.

The test plays auth's part: it publishes a signing key of its own on the AUTH stream (where
every service learns the keys tokens are checked against) and signs role-bearing tokens with it;
for the CLI it saves them where `parley login` would.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from parley.auth.v1.events_pb2 import SigningKeyPublished

from parley_core.actor import Actor
from parley_core.bus import EventBus
from parley_core.envelope import NewEvent
from parley_core.files import write_private_file
from parley_core.nats_connect import connect_nats
from parley_core.platform_state import STATE_FILE
from parley_core.tokens import AUDIENCE, ISSUER
from parley_core.topology import PLATFORM_USER, signing_key_subject


@dataclass
class OperatorTokens:
    key_id: str = "test-operators"
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    def token(self, user: str, role: str = "operator", lifetime_s: int = 3600) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": f"id-{user}",
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": now + lifetime_s,
            "role": role,
            "name": user,
        }
        return jwt.encode(claims, self.key, algorithm="EdDSA", headers={"kid": self.key_id})

    def metadata(self, user: str, role: str = "operator") -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {self.token(user, role)}"),)

    async def publish(self, bus: EventBus) -> None:
        await bus.append(
            signing_key_subject(self.key_id),
            NewEvent(
                aggregate_type="key",
                aggregate_id=self.key_id,
                actor=Actor.service("test"),
                payload=SigningKeyPublished(
                    key_id=self.key_id,
                    algorithm="EdDSA",
                    public_key=self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
                ),
            ),
            aggregate_version=1,
            expected_last_subject_seq=None,
        )

    async def publish_on_platform(self, data_dir: Path) -> None:
        """Through the NATS server of a platform `parley up` runs in `data_dir`."""
        passwords = json.loads((data_dir / "secrets" / "nats-passwords.json").read_text())
        nats_url = json.loads((data_dir / STATE_FILE).read_text())["nats_url"]
        nc = await connect_nats(
            url=nats_url,
            user=PLATFORM_USER,
            password=passwords[PLATFORM_USER],
            ca_cert=data_dir / "pki" / "ca.crt",
            name="test-operators",
        )
        try:
            await self.publish(EventBus(nc, service=PLATFORM_USER, producer="test"))
        finally:
            await nc.close()

    def save_cli_login(self, data_dir: Path, user: str, role: str = "operator") -> None:
        """Where `parley login` keeps a session, so `parley --as USER …` acts as this operator."""
        (data_dir / "cli").mkdir(mode=0o700, exist_ok=True)
        session = {"access_token": self.token(user, role), "user_id": f"id-{user}"}
        write_private_file(data_dir / "cli" / f"{user}.json", json.dumps(session).encode())
