"""The auth service's composition: projection, commands and the gRPC servicer."""

from __future__ import annotations

import contextlib
import uuid

import grpc
from parley.auth.v1 import auth_pb2, auth_pb2_grpc
from parley.auth.v1.events_pb2 import SigningKeyPublished, UserRegistered

from parley_auth.domain import (
    DEFAULT_ROLE,
    Account,
    AccountDirectory,
    check_password_policy,
    normalize_username,
    username_key,
)
from parley_auth.passwords import hash_password, verify_password
from parley_auth.signing import TokenIssuer
from parley_core.bus import ConcurrencyConflict, ReceivedEvent, Replay
from parley_core.envelope import NewEvent, open_payload
from parley_core.errors import AlreadyExists, InvalidArgument, Unauthenticated
from parley_core.runner import RunContext
from parley_core.tokens import ALGORITHM
from parley_core.topology import signing_key_subject, username_subject

LOGIN_FAILED = "username or password is wrong"


class AuthApp(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self) -> None:
        self.accounts = AccountDirectory()
        self._ctx: RunContext | None = None
        self._issuer: TokenIssuer | None = None
        self._replay: Replay | None = None

    async def start(self, ctx: RunContext) -> None:
        self._ctx = ctx
        self._issuer = TokenIssuer.load_or_create(ctx.settings.secrets_dir / "auth-signing-key.pem")
        await self._publish_signing_key(self._issuer)
        self._replay = await ctx.bus.replay(stream="AUTH", filter_subject=username_subject("*"), handler=self._apply)
        await self._replay.wait_caught_up()
        auth_pb2_grpc.add_AuthServiceServicer_to_server(self, ctx.server)
        ctx.add_service_name(auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name)

    async def stop(self) -> None:
        pass

    async def _publish_signing_key(self, issuer: TokenIssuer) -> None:
        assert self._ctx is not None
        event = NewEvent(
            aggregate_type="signing_key",
            aggregate_id=issuer.key_id,
            payload=SigningKeyPublished(key_id=issuer.key_id, algorithm=ALGORITHM, public_key=issuer.public_key),
            actor="service:auth",
        )
        with contextlib.suppress(ConcurrencyConflict):  # published by an earlier start
            await self._ctx.bus.append(
                signing_key_subject(issuer.key_id), event, aggregate_version=1, expected_last_subject_seq=0
            )

    async def _apply(self, event: ReceivedEvent) -> None:
        payload = open_payload(event.envelope)
        if isinstance(payload, UserRegistered):
            self.accounts.add(Account(payload.user_id, payload.username, payload.password_hash, payload.role))

    async def Register(
        self, request: auth_pb2.RegisterRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> auth_pb2.RegisterResponse:
        assert self._ctx is not None
        assert self._replay is not None
        username = normalize_username(request.username)
        check_password_policy(request.password, username)
        if self.accounts.find(username) is not None:
            raise AlreadyExists("that username is taken")
        user_id = uuid.uuid4().hex
        password_hash = await hash_password(request.password)
        event = NewEvent(
            aggregate_type="user",
            aggregate_id=user_id,
            payload=UserRegistered(user_id=user_id, username=username, password_hash=password_hash, role=DEFAULT_ROLE),
            actor=f"user:{user_id}",
        )
        try:
            appended = await self._ctx.bus.append(
                username_subject(username_key(username)), event, aggregate_version=1, expected_last_subject_seq=0
            )
        except ConcurrencyConflict:
            raise AlreadyExists("that username is taken") from None
        await self._replay.wait_for_seq(appended.stream_seq)
        return auth_pb2.RegisterResponse(user_id=user_id, username=username)

    async def Login(
        self, request: auth_pb2.LoginRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> auth_pb2.LoginResponse:
        assert self._issuer is not None
        if not request.username or not request.password:
            raise InvalidArgument("username and password are required")
        try:
            username = normalize_username(request.username)
        except InvalidArgument:
            username = ""
        account = self.accounts.find(username) if username else None
        ok = await verify_password(account.password_hash if account else None, request.password)
        if not ok or account is None:
            raise Unauthenticated(LOGIN_FAILED)
        token, expires = self._issuer.issue(user_id=account.user_id, username=account.username, role=account.role)
        return auth_pb2.LoginResponse(access_token=token, user_id=account.user_id, expires_at_unix=expires)
