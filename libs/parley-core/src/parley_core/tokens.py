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
from parley.auth.v1.events_pb2 import SigningKeyPublished, SigningKeyRetired

from parley_core.access import AccessProjection
from parley_core.bus import EventBus, ReceivedEvent, Replay
from parley_core.envelope import open_payload
from parley_core.errors import PermissionDenied, Unauthenticated
from parley_core.rbac import MFA_PENDING_PERMISSIONS, Permission, permissions_of
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
    session_id: str = ""
    # The role requires MFA and this session's login used none.
    mfa_pending: bool = False

    @property
    def permissions(self) -> frozenset[Permission]:
        granted = permissions_of(self.role)
        return granted & MFA_PENDING_PERMISSIONS if self.mfa_pending else granted

    def require(self, permission: Permission) -> None:
        if permission in self.permissions:
            return
        if self.mfa_pending and permission in permissions_of(self.role):
            raise PermissionDenied(
                f"role {self.role!r} requires two-factor authentication: enrol TOTP and log in again with a code"
            )
        raise PermissionDenied(f"role {self.role!r} lacks the {permission.value!r} permission")


class TokenVerifier:
    """Checks the signature and claims, then the caller's current standing in `access`.

    The role in the token is only a hint: the projection's role, disabled flag and revoked
    sessions win, so a change made after the token was issued applies on the next call.
    """

    def __init__(self, access: AccessProjection | None = None) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._retired: set[str] = set()
        self.access = access if access is not None else AccessProjection()

    def add_key(self, key_id: str, public_key: bytes) -> None:
        self._keys[key_id] = Ed25519PublicKey.from_public_bytes(public_key)

    async def apply(self, event: ReceivedEvent) -> None:
        payload = open_payload(event.envelope)
        if isinstance(payload, SigningKeyRetired):
            self._retired.add(payload.key_id)
            self._keys.pop(payload.key_id, None)
        elif (
            isinstance(payload, SigningKeyPublished)
            and payload.algorithm == ALGORITHM
            and payload.key_id not in self._retired
        ):
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
            raise Unauthenticated("access token was signed by an unknown or retired key; log in again")
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
        user_id = str(claims["sub"])
        session_id = str(claims.get("sid", ""))
        if self.access.is_disabled(user_id):
            raise Unauthenticated("this account is disabled; ask an administrator")
        if session_id and self.access.is_revoked(session_id):
            raise Unauthenticated("this session was revoked; log in again")
        role = self.access.role_of(user_id) or str(claims.get("role", "member"))
        used_mfa = "otp" in (claims.get("amr") or ())
        return Caller(
            user_id=user_id,
            role=role,
            token_id=str(claims["jti"]),
            username=str(claims.get("name", "")),
            session_id=session_id,
            mfa_pending=self.access.mfa_required(role) and not used_mfa,
        )

    def caller(self, context: grpc.aio.ServicerContext[object, object]) -> Caller:
        """The authenticated user behind a gRPC call, from its `authorization: Bearer` metadata."""
        token = bearer_token(context)
        if token is None:
            raise Unauthenticated("missing `authorization: Bearer <token>` metadata; log in first")
        return self.verify(token)

    def authorize(self, context: grpc.aio.ServicerContext[object, object], permission: Permission) -> Caller:
        caller = self.caller(context)
        caller.require(permission)
        return caller


def bearer_token(context: grpc.aio.ServicerContext[object, object]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token:
                return token.strip()
    return None


async def follow_signing_keys(bus: EventBus, verifier: TokenVerifier) -> Replay:
    return await bus.replay(stream="AUTH", filter_subject=SIGNING_KEYS_FILTER, handler=verifier.apply)
