"""Access-token verification that every service does for itself.

Tokens are JWTs signed with Ed25519 (EdDSA) by the auth service through PyJWT. The public keys
arrive as SigningKeyPublished events on the AUTH stream, so verification needs no call to auth.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from parley.auth.v1.events_pb2 import SigningKeyPublished, SigningKeyRetired

from parley_core.access import AccessProjection
from parley_core.bus import EventBus, ReceivedEvent, Replay
from parley_core.envelope import open_payload
from parley_core.errors import PermissionDenied, Unauthenticated
from parley_core.rbac import MFA_PENDING_PERMISSIONS, Permission, denial_message, permissions_of, roles_holding
from parley_core.topology import AUTH_FILTER, SIGNING_KEYS_FILTER

log = logging.getLogger(__name__)

ALGORITHM = "EdDSA"
ED25519_PUBLIC_KEY_BYTES = 32
ISSUER = "parley-auth"
AUDIENCE = "parley"
# Verified tokens remembered per process. A client sends the same token on every call for its
# 15-minute life, and the Ed25519 check was the largest Python cost per call in `make bench`'s
# profile of gateway and messaging; the cache keys on the exact token text, so a changed
# signature or claim is verified afresh, and a remembered token still expires on time.
# With it, the caller's standing as of the access projection's current count of changes: any
# event applied there (a revocation, a role change...) makes the next look compute it afresh.
VERIFIED_CACHE_SIZE = 10_000


@dataclass(frozen=True)
class Caller:
    user_id: str
    role: str
    token_id: str
    username: str
    session_id: str = ""
    # The role requires MFA and this session's login used none.
    mfa_pending: bool = False
    # The anomaly detector asked for a step-up of this session (SessionStepUpRequired).
    step_up_pending: bool = False

    @property
    def permissions(self) -> frozenset[Permission]:
        granted = permissions_of(self.role)
        return granted & MFA_PENDING_PERMISSIONS if self.mfa_pending or self.step_up_pending else granted

    def require(self, permission: Permission, *, what: str = "this call") -> None:
        if permission in self.permissions:
            return
        if self.step_up_pending and permission in permissions_of(self.role):
            raise PermissionDenied(
                "this session must prove it is yours after suspicious activity: log in again "
                "(with your one-time code if you have a second factor)"
            )
        if self.mfa_pending and permission in permissions_of(self.role):
            raise PermissionDenied(
                f"role {self.role!r} requires two-factor authentication: enrol TOTP and log in again with a code"
            )
        raise PermissionDenied(
            denial_message(what, permission.value, holders=roles_holding(permission), role=self.role)
        )


@dataclass(frozen=True)
class _SignedClaims:
    """What the signature vouches for: safe to remember for the token's life, unlike standing."""

    user_id: str
    claimed_role: str
    token_id: str
    username: str
    session_id: str
    used_mfa: bool
    expires_at: float
    key_id: str


@dataclass(slots=True)
class _Remembered:
    """A verified token's claims, and the caller they made as of `as_of` (AccessProjection.changes)."""

    signed: _SignedClaims
    caller: Caller | None = None
    as_of: int = -1


class TokenVerifier:
    """Checks the signature and claims, then the caller's current standing in `access`.

    The role in the token is only a hint: the projection's role, disabled flag and revoked
    sessions win, so a change made after the token was issued applies on the next call. The
    signature and claims check is remembered for the token's life, the standing it gave until
    the access projection applies its next event.
    """

    def __init__(self, access: AccessProjection | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._retired: set[str] = set()
        self._clock = clock
        self._verified: OrderedDict[str, _Remembered] = OrderedDict()
        self.access = access if access is not None else AccessProjection()

    def add_key(self, key_id: str, public_key: bytes) -> None:
        self._keys[key_id] = Ed25519PublicKey.from_public_bytes(public_key)

    async def apply(self, event: ReceivedEvent) -> None:
        payload = open_payload(event.envelope)
        if isinstance(payload, SigningKeyRetired):
            self.retire_key(payload.key_id)
        elif (
            isinstance(payload, SigningKeyPublished)
            and payload.algorithm == ALGORITHM
            and payload.key_id not in self._retired
        ):
            if len(payload.public_key) != ED25519_PUBLIC_KEY_BYTES:
                # Auth never publishes one; left unknown, no token can claim it. Raising would
                # halt every service's AUTH projection for good (a replay starts at the beginning).
                log.error(
                    "security: ignored a signing key that is not an Ed25519 public key",
                    extra={
                        "security_event": "malformed_signing_key",
                        "key_id": payload.key_id,
                        "seq": event.stream_seq,
                    },
                )
                return
            self.add_key(payload.key_id, payload.public_key)

    def knows_key(self, key_id: str) -> bool:
        """Whether tokens signed with `key_id` are accepted (published and not retired)."""
        return key_id in self._keys

    def retire_key(self, key_id: str) -> None:
        """Refuse the key from now on, also for tokens it signed that the cache remembers."""
        self._retired.add(key_id)
        self._keys.pop(key_id, None)
        for token in [token for token, known in self._verified.items() if known.signed.key_id == key_id]:
            del self._verified[token]

    def verify(self, token: str) -> Caller:
        remembered = self._remembered(token)
        changes = self.access.changes
        if remembered.caller is None or remembered.as_of != changes:
            remembered.caller = self._standing(remembered.signed)  # raises, remembering nothing, if refused
            remembered.as_of = changes
        return remembered.caller

    def _remembered(self, token: str) -> _Remembered:
        remembered = self._verified.get(token)
        if remembered is not None:
            if self._clock() >= remembered.signed.expires_at:
                del self._verified[token]
                raise Unauthenticated("access token expired; refresh or log in again")
            if remembered.signed.key_id in self._keys:
                self._verified.move_to_end(token)
                return remembered
            del self._verified[token]
        remembered = self._verified[token] = _Remembered(self._verify_signed(token))
        if len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return remembered

    def _standing(self, signed: _SignedClaims) -> Caller:
        """The caller as of now: disabled, revoked, current role and MFA."""
        if self.access.is_erased(signed.user_id):
            raise Unauthenticated("this account was erased; it can no longer be used")
        if self.access.is_disabled(signed.user_id):
            raise Unauthenticated("this account is disabled; ask an administrator")
        if signed.session_id and self.access.is_revoked(signed.session_id):
            raise Unauthenticated("this session was revoked; log in again")
        role = self.access.role_of(signed.user_id) or signed.claimed_role
        return Caller(
            user_id=signed.user_id,
            role=role,
            token_id=signed.token_id,
            username=signed.username,
            session_id=signed.session_id,
            mfa_pending=self.access.mfa_required(role) and not signed.used_mfa,
            step_up_pending=bool(signed.session_id) and self.access.step_up_required(signed.session_id),
        )

    def _verify_signed(self, token: str) -> _SignedClaims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise Unauthenticated("access token is malformed; log in again") from None
        if header.get("alg") != ALGORITHM:
            raise Unauthenticated("access token uses an unsupported algorithm")
        key_id = str(header.get("kid", ""))
        key = self._keys.get(key_id)
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
        return _SignedClaims(
            user_id=str(claims["sub"]),
            claimed_role=str(claims.get("role", "member")),
            token_id=str(claims["jti"]),
            username=str(claims.get("name", "")),
            session_id=str(claims.get("sid", "")),
            used_mfa="otp" in (claims.get("amr") or ()),
            expires_at=float(claims["exp"]),
            key_id=key_id,
        )

    def caller(self, context: grpc.aio.ServicerContext[object, object]) -> Caller:
        """The authenticated user behind a gRPC call, from its `authorization: Bearer` metadata.

        The first look of a handler whose call the server interceptor has just authorized
        (`authorize_call`) takes the caller it found, in the same instant of the same call; any
        later look reads the caller's standing afresh.
        """
        handed = _handed_over.get()
        if handed is not None:
            _handed_over.set(None)
            if handed[0] is context:
                return handed[1]
        token = bearer_token(context)
        if token is None:
            raise Unauthenticated("missing `authorization: Bearer <token>` metadata; log in first")
        return self.verify(token)

    def authorize(
        self, context: grpc.aio.ServicerContext[object, object], permission: Permission, *, what: str = "this call"
    ) -> Caller:
        caller = self.caller(context)
        caller.require(permission, what=what)
        return caller

    def authorize_call(
        self, context: grpc.aio.ServicerContext[object, object], permission: Permission, *, what: str
    ) -> None:
        """The server interceptor's check before the handler runs; the handler's first `caller`
        takes the caller it found instead of verifying the same token a second time."""
        caller = self.authorize(context, permission, what=what)
        _handed_over.set((context, caller))


# The caller `authorize_call` found, for the first `caller` of the same call: each gRPC call runs in
# a task of its own, so this is one call's. Without it each call's token was looked up twice
# (interceptor, then handler) in gateway and messaging: twice its bearer metadata, cache and standing.
_handed_over: ContextVar[tuple[object, Caller] | None] = ContextVar("parley_authorized_caller", default=None)


def bearer_token(context: grpc.aio.ServicerContext[object, object]) -> str | None:
    """The call's bearer token (None without one). A call carrying two `authorization` headers is
    refused: a check of one and a use of the other would act as someone else than was checked."""
    carried = [value for key, value in context.invocation_metadata() or () if key == "authorization"]
    if len(carried) > 1:
        raise Unauthenticated(f"{len(carried)} `authorization` metadata headers; send exactly one Bearer token")
    return bearer_of(carried[0]) if carried else None


def bearer_of(value: str | bytes) -> str | None:
    """The token of one `authorization` value (`Bearer <token>`), None if it carries none."""
    text = value.decode() if isinstance(value, bytes) else value
    scheme, _, token = text.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def follow_signing_keys(bus: EventBus, verifier: TokenVerifier) -> Replay:
    """Added to the process's one replay of AUTH (EventBus.follow), for the signing keys only."""
    return bus.follow(stream="AUTH", filter_subject=AUTH_FILTER, handler=verifier.apply, subjects=SIGNING_KEYS_FILTER)
