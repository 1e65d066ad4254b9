"""Access-token verification that every service does for itself.

Tokens are JWTs signed with Ed25519 (EdDSA) by the auth service through PyJWT. The public keys
arrive as SigningKeyPublished events on the AUTH stream, so verification needs no call to auth.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from parley.auth.v1.events_pb2 import SigningKeyPublished

from parley_core.bus import EventBus, ReceivedEvent, Replay
from parley_core.envelope import open_payload
from parley_core.errors import Unauthenticated
from parley_core.topology import SIGNING_KEYS_FILTER

log = logging.getLogger(__name__)

ALGORITHM = "EdDSA"
ISSUER = "parley-auth"
AUDIENCE = "parley"


@dataclass(frozen=True)
class Caller:
    user_id: str
    role: str
    token_id: str
    username: str


class TokenVerifier:
    def __init__(self) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}

    def add_key(self, key_id: str, public_key: bytes) -> None:
        self._keys[key_id] = Ed25519PublicKey.from_public_bytes(public_key)

    async def apply(self, event: ReceivedEvent) -> None:
        payload = open_payload(event.envelope)
        if isinstance(payload, SigningKeyPublished) and payload.algorithm == ALGORITHM:
            self.add_key(payload.key_id, payload.public_key)

    def verify(self, token: str) -> Caller:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise Unauthenticated("access token is malformed; log in again") from None
        if header.get("alg") != ALGORITHM:
            raise Unauthenticated("access token uses an unsupported algorithm")
        key = self._keys.get(str(header.get("kid", "")))
        if key is None:
            raise Unauthenticated("access token was signed by an unknown key; log in again")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("access token expired; log in again") from None
        except jwt.InvalidTokenError:
            raise Unauthenticated("access token is invalid; log in again") from None
        return Caller(
            user_id=str(claims["sub"]),
            role=str(claims.get("role", "member")),
            token_id=str(claims["jti"]),
            username=str(claims.get("name", "")),
        )

    def caller(self, context: grpc.aio.ServicerContext[object, object]) -> Caller:
        """The authenticated user behind a gRPC call, from its `authorization: Bearer` metadata."""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                text = value.decode() if isinstance(value, bytes) else value
                scheme, _, token = text.partition(" ")
                if scheme.lower() == "bearer" and token:
                    return self.verify(token.strip())
        raise Unauthenticated("missing `authorization: Bearer <token>` metadata; log in first")


async def follow_signing_keys(bus: EventBus, verifier: TokenVerifier) -> Replay:
    return await bus.replay(stream="AUTH", filter_subject=SIGNING_KEYS_FILTER, handler=verifier.apply)
