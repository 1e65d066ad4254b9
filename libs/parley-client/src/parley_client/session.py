"""One TLS channel to the gateway and the session's tokens: every call goes through `_call`.

`_call` presents the access token (renewing it first when renewal is on and it is about to
expire) and waits out short rate-limit refusals; `_write` also retries a write that is safe to
repeat while its outcome is unknown. The client's calls, plain (plain_calls.py) or with
behaviour of their own (client.py), are built on these two.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import grpc
from parley.auth.v1 import auth_pb2
from parley.gateway.v1 import gateway_pb2_grpc

from parley_client.errors import OutcomeUnknown, ParleyError, error_of, never_sent

DEFAULT_TIMEOUT_S = 10.0
# A send (or another write that is safe to repeat) is retried for this long when its outcome is
# unknown: long enough to ride out a restart of the platform's broker.
WRITE_TIMEOUT_S = 30.0
WRITE_RETRY_FIRST_S = 0.1
WRITE_RETRY_MAX_S = 2.0
# A write that found no connection to the gateway, and had not gone out before, is retried this
# long only: it was not made, and the platform is most likely not running.
NO_CONNECTION_GIVE_UP_S = 2.0
# Answers after which a write may or may not have been made (the platform's own marker on
# UNAVAILABLE, a deadline, a connection lost in flight): retried with the same request.
AMBIGUOUS = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED}
)
MAX_RETRY_WAIT_S = 5.0
# With renewal on (keep_logged_in), an access token is renewed this long before it expires (a
# quarter of its lifetime when that is shorter).
RENEW_MARGIN_S = 60.0
TOKEN_LIFETIME_S = 15 * 60.0  # auth's access tokens, when nothing says otherwise

Renew = Callable[[Any], Awaitable[None]]


Response = TypeVar("Response")


@dataclass(frozen=True)
class ClientConfig:
    """Where the gateway listens and the CA that signed its certificate."""

    gateway_address: str
    ca_cert: Path

    @classmethod
    def from_data_dir(cls, data_dir: Path) -> ClientConfig:
        """The gateway a platform started in `data_dir` wrote; without one, a ParleyError
        (UNAVAILABLE) names the file it looked for."""
        path = data_dir / "client.json"
        if not path.exists():
            raise ParleyError(
                grpc.StatusCode.UNAVAILABLE,
                f"no platform is running in {data_dir.resolve()} (no {path.name} there): start it with `make run` "
                "(or `parley up`), or name the folder it runs in with $PARLEY_DATA_DIR",
            )
        raw = json.loads(path.read_text())
        return cls(gateway_address=raw["gateway_address"], ca_cert=Path(raw["ca_cert"]))


class GatewaySession:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self._stub = gateway_pb2_grpc.GatewayStub(channel)
        self.access_token: str | None = None
        self.user_id: str | None = None
        self.refresh_token: str | None = None
        self.expires_at: float | None = None  # unix time the access token expires, from the login
        self._renew: Renew | None = None
        self._renewing: asyncio.Lock | None = None
        self.lifetime_s = TOKEN_LIFETIME_S  # of the access token, as issued

    @classmethod
    def connect(cls, address: str, *, ca_cert: bytes, server_name: str = "gateway") -> Self:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca_cert)
        options = [("grpc.ssl_target_name_override", server_name)]
        return cls(grpc.aio.secure_channel(address, credentials, options=options))

    @classmethod
    def from_config(cls, config: ClientConfig) -> Self:
        return cls.connect(config.gateway_address, ca_cert=config.ca_cert.read_bytes())

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    def _metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.access_token}")] if self.access_token else []

    def set_tokens(self, response: auth_pb2.LoginResponse, lifetime_s: float | None = None) -> None:
        """The tokens of a login or a refresh (just issued), or saved ones with their `lifetime_s`."""
        self.access_token, self.user_id = response.access_token, response.user_id or self.user_id
        self.refresh_token = response.refresh_token or None
        self.expires_at = float(response.expires_at_unix) or None
        if self.expires_at is not None:
            self.lifetime_s = lifetime_s if lifetime_s is not None else max(self.expires_at - time.time(), 0.0)

    def use_token(self, access_token: str, user_id: str = "") -> None:
        self.access_token = access_token
        self.user_id = user_id or None

    async def current_token(self) -> str:
        """The access token, to present to another service (storage's audit queries); renewed
        first when it is about to expire and renewal is on."""
        await self._renew_if_expiring()
        if not self.access_token:
            raise ParleyError(grpc.StatusCode.UNAUTHENTICATED, "not logged in")
        return self.access_token

    def _expiring(self) -> bool:
        margin = min(RENEW_MARGIN_S, self.lifetime_s / 4)
        return self.expires_at is not None and time.time() > self.expires_at - margin

    async def _renew_if_expiring(self) -> bool:
        """True when the token was about to expire and was renewed."""
        if self._renew is None or not self._expiring():
            return False
        if self._renewing is None:
            self._renewing = asyncio.Lock()
        async with self._renewing:  # concurrent calls renew once
            if self._expiring():
                await self._renew(self)
        return True

    async def renewed_after(self, error: ParleyError, opened_with: str | None) -> bool:
        """True when `error` ended a live stream opened with the access token `opened_with`
        because that token expired, and there is a new one (keep_logged_in): open the stream
        again, resuming where it stopped."""
        if error.code != grpc.StatusCode.UNAUTHENTICATED or self._renew is None:
            return False
        await self._renew_if_expiring()
        return self.access_token != opened_with

    async def _call(
        self, method: Any, request: Any, timeout: float = DEFAULT_TIMEOUT_S, *, authorized: bool = True
    ) -> Any:
        """One call; a rate-limit refusal with a short retry hint is waited out and retried.

        Retrying is safe: the gateway refuses over-budget calls before doing anything. Retries
        stop once the call's own timeout has passed since the first attempt.
        """
        if authorized:
            await self._renew_if_expiring()
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout
        while True:
            try:
                metadata = self._metadata() if authorized else []
                return await method(request, metadata=metadata, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                error = error_of(exc)
            wait = error.retry_after_s
            if wait is None or wait > MAX_RETRY_WAIT_S or loop.time() + wait > give_up:
                raise error
            await asyncio.sleep(wait)

    async def _keyed_write(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[Any, Response],
        request: Any,
        *,
        idempotency_key: str | None,
        timeout: float,
    ) -> Response:
        """A write made once (a send, a new channel): under the caller's idempotency key, else a new
        one, set in `request`, so a retry of an unknown outcome cannot make it twice."""
        key = idempotency_key or uuid.uuid4().hex
        request.idempotency_key = key
        return cast(Response, await self._write(method, request, timeout=timeout, idempotency_key=key))

    async def _write(self, method: Any, request: Any, *, timeout: float, idempotency_key: str = "") -> Any:
        """A write that is safe to repeat (a keyed send, an edit to a given text, a reaction):
        an ambiguous answer is retried with the same request, with backoff, until `timeout`.

        So a write reported failed was not made, and one made is reported made once; only a
        deadline that passes before any answer raises OutcomeUnknown, which says so. When every
        attempt found no connection to the gateway, nothing was sent: the last refusal is raised
        (after NO_CONNECTION_GIVE_UP_S, not the whole `timeout`).
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout
        delay = WRITE_RETRY_FIRST_S
        maybe_sent = False  # an attempt reached the gateway and its answer was ambiguous
        unconnected_since: float | None = None
        while True:
            try:
                return await self._call(
                    method, request, timeout=max(0.0, min(give_up - loop.time(), DEFAULT_TIMEOUT_S))
                )
            except ParleyError as exc:
                if exc.code not in AMBIGUOUS:
                    raise
                last = exc
            if never_sent(last):
                unconnected_since = loop.time() if unconnected_since is None else unconnected_since
                if not maybe_sent and loop.time() - unconnected_since >= NO_CONNECTION_GIVE_UP_S:
                    raise last
            else:
                maybe_sent = True
            if give_up - loop.time() <= delay:
                raise (OutcomeUnknown(last, idempotency_key) if maybe_sent else last) from last
            await asyncio.sleep(delay)  # backoff while the platform recovers
            delay = min(delay * 2, WRITE_RETRY_MAX_S)
