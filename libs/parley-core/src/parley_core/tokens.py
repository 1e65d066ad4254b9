"""Access-token verification that every service does for itself.

Tokens are JWTs signed with Ed25519 (EdDSA) by the auth service through PyJWT. The public keys
arrive as SigningKeyPublished events on the AUTH stream, so verification needs no call to auth.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
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
# Verified tokens remembered per process. A client sends the same token on every call for its
# 15-minute life, and the Ed25519 check was the largest Python cost per call in `make bench`'s
# profile of gateway and messaging; the cache keys on the exact token text, so a changed
# signature or claim is verified afresh, and a remembered token still expires on time.
VERIFIED_CACHE_SIZE = 10_000


@dataclass(frozen=True)
class Caller:
    user_id: str
    role: str
    token_id: str
    username: str


class TokenVerifier:
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._clock = clock
        self._verified: OrderedDict[str, tuple[Caller, float, str]] = OrderedDict()

    def add_key(self, key_id: str, public_key: bytes) -> None:
        self._keys[key_id] = Ed25519PublicKey.from_public_bytes(public_key)

    async def apply(self, event: ReceivedEvent) -> None:
        payload = open_payload(event.envelope)
        if isinstance(payload, SigningKeyPublished) and payload.algorithm == ALGORITHM:
            self.add_key(payload.key_id, payload.public_key)

    def verify(self, token: str) -> Caller:
        remembered = self._verified.get(token)
        if remembered is not None:
            caller, expires_at, key_id = remembered
            if self._clock() >= expires_at:
                del self._verified[token]
                raise Unauthenticated("access token expired; refresh or log in again")
            if key_id in self._keys:
                self._verified.move_to_end(token)
                return caller
            del self._verified[token]
        caller, expires_at, key_id = self._verify_signed(token)
        self._verified[token] = (caller, expires_at, key_id)
        if len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return caller

    def _verify_signed(self, token: str) -> tuple[Caller, float, str]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise Unauthenticated("access token is malformed; log in again") from None
        if header.get("alg") != ALGORITHM:
            raise Unauthenticated("access token uses an unsupported algorithm")
        key_id = str(header.get("kid", ""))
        key = self._keys.get(key_id)
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
        caller = Caller(
            user_id=str(claims["sub"]),
            role=str(claims.get("role", "member")),
            token_id=str(claims["jti"]),
            username=str(claims.get("name", "")),
        )
        return caller, float(claims["exp"]), key_id

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
