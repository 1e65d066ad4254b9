"""ParleyClient: one TLS channel to the gateway, typed calls, and live streams."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from parley.auth.v1 import auth_pb2
from parley.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from parley.messaging.v1 import messaging_pb2
from parley.storage.v1 import storage_pb2

from parley_client.device_store import DeviceStore
from parley_client.e2ee import BODY_PREFIX, E2eeDevice, UndecryptableMessage

DEFAULT_TIMEOUT_S = 10.0
# A send (or another write that is safe to repeat) is retried for this long when its outcome is
# unknown: long enough to ride out a restart of the platform's broker.
WRITE_TIMEOUT_S = 30.0
WRITE_RETRY_FIRST_S = 0.1
WRITE_RETRY_MAX_S = 2.0
# Answers after which a write may or may not have been made (the platform's own marker on
# UNAVAILABLE, a deadline, a connection lost in flight): retried with the same request.
AMBIGUOUS = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED}
)
MAX_RETRY_WAIT_S = 5.0
EXPORT_TIMEOUT_S = 120.0  # export and erasure walk all of a user's archived events
LOOKUP_BATCH = 200  # auth's limit per LookupUsers call
# A before_seq past any channel's last message (the archive's sequence numbers are signed 64-bit).
AFTER_EVERY_MESSAGE = 2**63 - 1
# With renewal on (keep_logged_in), an access token is renewed this long before it expires (a
# quarter of its lifetime when that is shorter).
RENEW_MARGIN_S = 60.0
TOKEN_LIFETIME_S = 15 * 60.0  # auth's access tokens, when nothing says otherwise
# A live stream that ends with one of these is reopened from where it stopped.
RESUMABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
)


class ParleyError(Exception):
    """A call the platform refused; `code` is the gRPC status, the message says what to do.

    `retry_after_s` is set when the gateway's rate limit refused the call: wait that long.
    """

    def __init__(self, code: grpc.StatusCode, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


class OutcomeUnknown(ParleyError):
    """A write whose outcome the platform could not confirm before the call's deadline.

    It may or may not have been made. Calling again with the same `idempotency_key` (a send,
    a channel creation) or the same request never makes it twice and returns the result if it was.
    """

    def __init__(self, last: ParleyError, idempotency_key: str = "") -> None:
        again = (
            f"call again with idempotency_key={idempotency_key!r}" if idempotency_key else "make the same call again"
        )
        super().__init__(
            last.code,
            f"the platform did not confirm this change before the deadline, so it may or may not have been made; "
            f"{again} to find out (it is never made twice). Last answer: {last.message}",
        )
        self.idempotency_key = idempotency_key


class MfaRequired(ParleyError):
    """The account uses two-factor authentication: log in again with a TOTP or recovery code."""


# Auth's refusal of a login without the second factor starts with these words (auth.proto).
MFA_MISSING = "this account uses two-factor authentication"


@dataclass(frozen=True)
class ClientConfig:
    """Where the gateway listens and the CA that signed its certificate."""

    gateway_address: str
    ca_cert: Path

    @classmethod
    def from_data_dir(cls, data_dir: Path) -> ClientConfig:
        path = data_dir / "client.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: start the platform with `make run` (or `parley up`) first")
        raw = json.loads(path.read_text())
        return cls(gateway_address=raw["gateway_address"], ca_cert=Path(raw["ca_cert"]))


async def _refresh(client: ParleyClient) -> None:
    await client.refresh()


def _raise(exc: grpc.aio.AioRpcError) -> ParleyError:
    retry_after_s = None
    for key, value in exc.trailing_metadata() or ():
        if key == "retry-after-ms":
            retry_after_s = int(value) / 1000
    return ParleyError(exc.code(), exc.details() or exc.code().name, retry_after_s)


@dataclass(frozen=True)
class LiveEvent:
    """One event of a live stream.

    `kind` is "message" (new), "updated" (edited or redacted: `message` holds the change),
    "reaction", "read_marker" or "membership" (joins, leaves, kicks, bans, roles, name and
    topic); `event` is the whole protobuf event.
    """

    kind: str
    event: gateway_pb2.ClientEvent

    @property
    def message(self) -> messaging_pb2.ChatMessage:
        return self.event.updated if self.kind == "updated" else self.event.message

    @property
    def channel_id(self) -> str:
        return str(getattr(self.event, self.kind).channel_id)

    @property
    def position(self) -> int:
        return int(getattr(self.event, self.kind).position)


class LiveStream:
    """Live events of the caller's channels. `ready()` returns once nothing can be missed.

    `positions` holds, per channel, the position of the last event read: pass it to
    `ParleyClient.subscribe(resume=...)` to continue after a disconnect with no gap or repeat.
    A `membership` event of a channel the stream does not cover tells the caller that they
    arrived there (invited, or joined elsewhere): subscribe again to cover it.
    """

    def __init__(
        self,
        call: Any,
        positions: Mapping[str, int] | None = None,
        reveal: Callable[[messaging_pb2.ChatMessage], Awaitable[None]] | None = None,
    ) -> None:
        self._call = call
        self.channel_ids: list[str] = []
        self.positions: dict[str, int] = dict(positions or {})
        self._reveal = reveal

    async def ready(self) -> list[str]:
        first = await self._next()
        if first.WhichOneof("event") != "ready":
            raise ParleyError(grpc.StatusCode.INTERNAL, "live stream did not start with `ready`")
        self._started(first.ready)
        return self.channel_ids

    def _started(self, ready: gateway_pb2.Ready) -> None:
        self.channel_ids = list(ready.channel_ids)
        for start in ready.positions:
            self.positions.setdefault(start.channel_id, start.after_position)

    async def _next(self) -> gateway_pb2.ClientEvent:
        try:
            event = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise _raise(exc) from None
        if event is grpc.aio.EOF:
            raise StopAsyncIteration
        assert isinstance(event, gateway_pb2.ClientEvent)
        return event

    def __aiter__(self) -> AsyncIterator[messaging_pb2.ChatMessage]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[messaging_pb2.ChatMessage]:
        async for event in self.events():
            if event.kind == "message":
                yield event.message

    async def events(self) -> AsyncIterator[LiveEvent]:
        """New messages and changes to earlier ones (edits, redactions), in channel order."""
        while True:
            try:
                event = await self._next()
            except StopAsyncIteration:
                return  # the server ended the stream (it is draining): resume elsewhere
            kind = event.WhichOneof("event")
            if kind == "ready":
                self._started(event.ready)
            if kind is None or kind == "ready":
                continue
            live = LiveEvent(kind, event)
            if live.channel_id in self.channel_ids:  # not an arrival elsewhere: resuming there is refused
                self.positions[live.channel_id] = max(self.positions.get(live.channel_id, 0), live.position)
            if self._reveal is not None and kind in ("message", "updated"):
                await self._reveal(live.message)
            yield live

    def cancel(self) -> None:
        self._call.cancel()


class ParleyClient:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self._stub = gateway_pb2_grpc.GatewayStub(channel)
        self.access_token: str | None = None
        self.user_id: str | None = None
        self.refresh_token: str | None = None
        self.expires_at: float | None = None  # unix time the access token expires, from the login
        self.e2ee: E2eeDevice | None = None
        self._renew: Callable[[ParleyClient], Awaitable[None]] | None = None
        self._renewing: asyncio.Lock | None = None
        self.lifetime_s = TOKEN_LIFETIME_S  # of the access token, as issued

    @classmethod
    def connect(cls, address: str, *, ca_cert: bytes, server_name: str = "gateway") -> ParleyClient:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca_cert)
        options = [("grpc.ssl_target_name_override", server_name)]
        return cls(grpc.aio.secure_channel(address, credentials, options=options))

    @classmethod
    def from_config(cls, config: ClientConfig) -> ParleyClient:
        return cls.connect(config.gateway_address, ca_cert=config.ca_cert.read_bytes())

    async def __aenter__(self) -> ParleyClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    def _metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.access_token}")] if self.access_token else []

    def keep_logged_in(self, renew: Callable[[ParleyClient], Awaitable[None]] | None = None) -> None:
        """Renew the access token before it expires, for as long as the session lasts: before a
        call, and when a live stream (`live`) ended because the token expired. `renew` replaces
        the default (`refresh`), e.g. to share one saved session between processes."""
        self._renew = renew or _refresh

    def set_tokens(self, response: auth_pb2.LoginResponse, lifetime_s: float | None = None) -> None:
        """The tokens of a login or a refresh (just issued), or saved ones with their `lifetime_s`."""
        self.access_token, self.user_id = response.access_token, response.user_id or self.user_id
        self.refresh_token = response.refresh_token or None
        self.expires_at = float(response.expires_at_unix) or None
        if self.expires_at is not None:
            self.lifetime_s = lifetime_s if lifetime_s is not None else max(self.expires_at - time.time(), 0.0)

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
                error = _raise(exc)
            wait = error.retry_after_s
            if wait is None or wait > MAX_RETRY_WAIT_S or loop.time() + wait > give_up:
                raise error
            await asyncio.sleep(wait)

    async def _write(self, method: Any, request: Any, *, timeout: float, idempotency_key: str = "") -> Any:
        """A write that is safe to repeat (a keyed send, an edit to a given text, a reaction):
        an ambiguous answer is retried with the same request, with backoff, until `timeout`.

        So a write reported failed was not made, and one made is reported made once; only a
        deadline that passes before any answer raises OutcomeUnknown, which says so.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout
        delay = WRITE_RETRY_FIRST_S
        while True:
            try:
                return await self._call(
                    method, request, timeout=max(0.0, min(give_up - loop.time(), DEFAULT_TIMEOUT_S))
                )
            except ParleyError as exc:
                if exc.code not in AMBIGUOUS:
                    raise
                last = exc
            if give_up - loop.time() <= delay:
                raise OutcomeUnknown(last, idempotency_key) from last
            await asyncio.sleep(delay)  # backoff while the platform recovers
            delay = min(delay * 2, WRITE_RETRY_MAX_S)

    async def register(self, username: str, password: str, *, invite_code: str = "") -> auth_pb2.RegisterResponse:
        """`invite_code`: needed when the platform registers by invitation (PARLEY_REGISTRATION=invite)."""
        request = auth_pb2.RegisterRequest(username=username, password=password, invite_code=invite_code)
        response: auth_pb2.RegisterResponse = await self._call(self._stub.Register, request)
        return response

    async def login(
        self, username: str, password: str, *, totp_code: str = "", recovery_code: str = ""
    ) -> auth_pb2.LoginResponse:
        """Log in; an account with two-factor authentication also needs `totp_code` (from the
        authenticator app) or one unused `recovery_code`. Without one it raises MfaRequired."""
        request = auth_pb2.LoginRequest(
            username=username, password=password, totp_code=totp_code, recovery_code=recovery_code
        )
        try:
            response: auth_pb2.LoginResponse = await self._call(self._stub.Login, request)
        except ParleyError as exc:
            if exc.code == grpc.StatusCode.UNAUTHENTICATED and exc.message.startswith(MFA_MISSING):
                raise MfaRequired(exc.code, exc.message) from None
            raise
        self.set_tokens(response)
        return response

    async def refresh(self) -> auth_pb2.LoginResponse:
        """New access and refresh tokens for the current session; the old refresh token is spent."""
        if not self.refresh_token:
            raise ParleyError(grpc.StatusCode.FAILED_PRECONDITION, "no refresh token; log in first")
        request = auth_pb2.RefreshRequest(refresh_token=self.refresh_token)
        # The refresh token is the credential; the access token may have expired already.
        response: auth_pb2.LoginResponse = await self._call(self._stub.Refresh, request, authorized=False)
        self.set_tokens(response)
        return response

    async def renewed_after(self, error: ParleyError, opened_with: str | None) -> bool:
        """True when `error` ended a live stream opened with the access token `opened_with`
        because that token expired, and there is a new one (keep_logged_in): open the stream
        again, resuming where it stopped."""
        if error.code != grpc.StatusCode.UNAUTHENTICATED or self._renew is None:
            return False
        await self._renew_if_expiring()
        return self.access_token != opened_with

    async def logout(self) -> None:
        await self._call(self._stub.Logout, auth_pb2.LogoutRequest())
        self.access_token = self.refresh_token = None
        self.expires_at = None

    async def change_password(self, current_password: str, new_password: str) -> None:
        request = auth_pb2.ChangePasswordRequest(current_password=current_password, new_password=new_password)
        await self._call(self._stub.ChangePassword, request)

    async def begin_totp_enrolment(self) -> auth_pb2.BeginTotpEnrolmentResponse:
        """The otpauth URI (and its secret) for an authenticator app; confirm with a code from it."""
        response: auth_pb2.BeginTotpEnrolmentResponse = await self._call(
            self._stub.BeginTotpEnrolment, auth_pb2.BeginTotpEnrolmentRequest()
        )
        return response

    async def confirm_totp_enrolment(self, totp_code: str) -> list[str]:
        """Turns TOTP on; returns the recovery codes, shown this once."""
        response: auth_pb2.ConfirmTotpEnrolmentResponse = await self._call(
            self._stub.ConfirmTotpEnrolment, auth_pb2.ConfirmTotpEnrolmentRequest(totp_code=totp_code)
        )
        return list(response.recovery_codes)

    async def regenerate_recovery_codes(self, *, totp_code: str = "", password: str = "") -> list[str]:
        """New recovery codes (the old ones stop working); proves presence with either."""
        request = auth_pb2.RegenerateRecoveryCodesRequest(totp_code=totp_code, password=password)
        response: auth_pb2.RegenerateRecoveryCodesResponse = await self._call(
            self._stub.RegenerateRecoveryCodes, request
        )
        return list(response.recovery_codes)

    async def sessions(self, user_id: str = "") -> list[auth_pb2.Session]:
        response: auth_pb2.ListSessionsResponse = await self._call(
            self._stub.ListSessions, auth_pb2.ListSessionsRequest(user_id=user_id)
        )
        return list(response.sessions)

    async def revoke_session(self, session_id: str) -> None:
        await self._call(self._stub.RevokeSession, auth_pb2.RevokeSessionRequest(session_id=session_id))

    def _me(self) -> str:
        if not self.user_id:
            raise ParleyError(grpc.StatusCode.FAILED_PRECONDITION, "log in first (or give use_token the user id)")
        return self.user_id

    async def export_my_data(self) -> bytes:
        """Everything the archive holds about the logged-in user: a JSON document (parley-user-export/1)."""
        request = storage_pb2.ExportUserDataRequest(user_id=self._me())
        response: storage_pb2.ExportUserDataResponse = await self._call(
            self._stub.ExportUserData, request, timeout=EXPORT_TIMEOUT_S
        )
        return response.archive

    async def erase_my_data(self, reason: str = "") -> storage_pb2.EraseUserDataResponse:
        """Crypto-shred the logged-in user's data in the archive and the event log. Irreversible."""
        request = storage_pb2.EraseUserDataRequest(user_id=self._me(), reason=reason)
        response: storage_pb2.EraseUserDataResponse = await self._call(
            self._stub.EraseUserData, request, timeout=EXPORT_TIMEOUT_S
        )
        return response

    async def user_names(self, user_ids: Sequence[str]) -> dict[str, str]:
        """user id -> username for the ids that exist (at most 200 per call; more are asked in batches)."""
        names: dict[str, str] = {}
        wanted = [u for u in dict.fromkeys(user_ids) if u]
        for start in range(0, len(wanted), LOOKUP_BATCH):
            request = auth_pb2.LookupUsersRequest(user_ids=wanted[start : start + LOOKUP_BATCH])
            response: auth_pb2.LookupUsersResponse = await self._call(self._stub.LookupUsers, request)
            names.update((u.user_id, u.username) for u in response.users)
        return names

    async def find_users(self, usernames: Sequence[str]) -> dict[str, str]:
        """username -> user id for the people you may find: those who share a channel with you
        (and every account for owners and admins, who read the account directory).
        Names are compared ignoring case and keyed as given; a name not found is left out."""
        wanted = [n for n in dict.fromkeys(usernames) if n.strip()]
        ids: dict[str, str] = {}
        for start in range(0, len(wanted), LOOKUP_BATCH):
            batch = wanted[start : start + LOOKUP_BATCH]
            request = gateway_pb2.FindUsersRequest(usernames=batch)
            response: auth_pb2.LookupUsersResponse = await self._call(self._stub.FindUsers, request)
            by_name = {u.username.casefold(): u.user_id for u in response.users}
            ids.update((n, by_name[n.strip().casefold()]) for n in batch if n.strip().casefold() in by_name)
        return ids

    async def find_user(self, username: str) -> str:
        """The id of one person you may find (see `find_users`); NOT_FOUND as ParleyError otherwise."""
        found = await self.find_users([username])
        if username not in found:
            raise ParleyError(
                grpc.StatusCode.NOT_FOUND,
                f"no user named {username!r} shares a channel with you; ask them for their user id",
            )
        return found[username]

    def use_token(self, access_token: str, user_id: str = "") -> None:
        self.access_token = access_token
        self.user_id = user_id or None

    async def create_channel(
        self,
        name: str,
        *,
        encrypted: bool = False,
        private: bool = False,
        hide_history_before_join: bool = False,
        idempotency_key: str | None = None,
        timeout: float = WRITE_TIMEOUT_S,
    ) -> messaging_pb2.Channel:
        """A channel owned by the caller; private ones are joined by invitation only.

        Created once, like a send: an unknown outcome is retried with the same key until `timeout`.
        """
        key = idempotency_key or uuid.uuid4().hex
        request = messaging_pb2.CreateChannelRequest(
            name=name,
            encrypted=encrypted,
            private=private,
            hide_history_before_join=hide_history_before_join,
            idempotency_key=key,
        )
        channel: messaging_pb2.Channel = await self._write(
            self._stub.CreateChannel, request, timeout=timeout, idempotency_key=key
        )
        return channel

    async def create_direct(
        self,
        user_ids: Sequence[str],
        *,
        encrypted: bool = False,
        idempotency_key: str | None = None,
        timeout: float = WRITE_TIMEOUT_S,
    ) -> messaging_pb2.Channel:
        """A direct conversation with 1 to 7 others: fixed members, nobody moderates (created once, as above)."""
        key = idempotency_key or uuid.uuid4().hex
        request = messaging_pb2.CreateDirectChannelRequest(
            user_ids=list(user_ids), encrypted=encrypted, idempotency_key=key
        )
        channel: messaging_pb2.Channel = await self._write(
            self._stub.CreateDirectChannel, request, timeout=timeout, idempotency_key=key
        )
        return channel

    async def _member_action(self, method: Any, channel_id: str, user_id: str, reason: str) -> messaging_pb2.Channel:
        request = messaging_pb2.MemberActionRequest(channel_id=channel_id, user_id=user_id, reason=reason)
        channel: messaging_pb2.Channel = await self._call(method, request)
        return channel

    async def invite(self, channel_id: str, user_id: str) -> messaging_pb2.Channel:
        return await self._member_action(self._stub.InviteMember, channel_id, user_id, "")

    async def kick(self, channel_id: str, user_id: str, *, reason: str = "") -> messaging_pb2.Channel:
        return await self._member_action(self._stub.KickMember, channel_id, user_id, reason)

    async def ban(self, channel_id: str, user_id: str, *, reason: str = "") -> messaging_pb2.Channel:
        return await self._member_action(self._stub.BanMember, channel_id, user_id, reason)

    async def unban(self, channel_id: str, user_id: str) -> messaging_pb2.Channel:
        return await self._member_action(self._stub.UnbanMember, channel_id, user_id, "")

    async def set_role(self, channel_id: str, user_id: str, role: str) -> messaging_pb2.Channel:
        request = messaging_pb2.SetMemberRoleRequest(channel_id=channel_id, user_id=user_id, role=role)
        channel: messaging_pb2.Channel = await self._call(self._stub.SetMemberRole, request)
        return channel

    async def rename(self, channel_id: str, name: str) -> messaging_pb2.Channel:
        request = messaging_pb2.UpdateChannelRequest(channel_id=channel_id, name=name)
        channel: messaging_pb2.Channel = await self._call(self._stub.UpdateChannel, request)
        return channel

    async def set_topic(self, channel_id: str, topic: str) -> messaging_pb2.Channel:
        request = messaging_pb2.UpdateChannelRequest(channel_id=channel_id, topic=topic)
        channel: messaging_pb2.Channel = await self._call(self._stub.UpdateChannel, request)
        return channel

    async def join_channel(self, channel_id: str = "", *, name: str = "") -> messaging_pb2.Channel:
        """Join by id, or by `name` when exactly one channel the caller may join has it (several:
        FAILED_PRECONDITION naming their ids)."""
        channel: messaging_pb2.Channel = await self._call(
            self._stub.JoinChannel, messaging_pb2.JoinChannelRequest(channel_id=channel_id, name=name)
        )
        return channel

    async def invitations(self) -> list[messaging_pb2.Invitation]:
        """The caller's pending invitations, newest first: `join_channel(id)` accepts one,
        `decline_invitation(id)` drops it."""
        response: messaging_pb2.ListInvitationsResponse = await self._call(
            self._stub.ListInvitations, messaging_pb2.ListInvitationsRequest()
        )
        return list(response.invitations)

    async def decline_invitation(self, channel_id: str) -> None:
        """NOT_FOUND when the caller has no pending invitation to that channel."""
        await self._call(self._stub.DeclineInvitation, messaging_pb2.DeclineInvitationRequest(channel_id=channel_id))

    async def my_channels(self) -> list[messaging_pb2.Channel]:
        response: messaging_pb2.ListMyChannelsResponse = await self._call(
            self._stub.ListMyChannels, messaging_pb2.ListMyChannelsRequest()
        )
        return list(response.channels)

    async def send(
        self,
        channel_id: str,
        body: str,
        *,
        idempotency_key: str | None = None,
        thread_root_seq: int = 0,
        timeout: float = WRITE_TIMEOUT_S,
    ) -> messaging_pb2.ChatMessage:
        """Send once: a retry with the same idempotency key returns the first result.

        Call it once per message: when the platform cannot tell whether the message was stored
        (its broker restarting, a deadline), it is sent again with the same key, with backoff,
        for up to `timeout` seconds, so it is stored once and reported stored. If that time
        passes without an answer it raises OutcomeUnknown, naming the key to send again with.

        In an end-to-end encrypted channel the body is encrypted on this device first (see
        enable_e2ee); the returned message then carries the ciphertext the server stored.
        """
        body = await self._sealed(channel_id, body)
        key = idempotency_key or uuid.uuid4().hex
        request = messaging_pb2.PostMessageRequest(
            channel_id=channel_id, body=body, idempotency_key=key, thread_root_seq=thread_root_seq
        )
        message: messaging_pb2.ChatMessage = await self._write(
            self._stub.SendMessage, request, timeout=timeout, idempotency_key=key
        )
        return message

    async def history(
        self,
        channel_id: str,
        *,
        after_seq: int = 0,
        before_seq: int = 0,
        after_time: datetime | None = None,
        before_time: datetime | None = None,
        limit: int = 100,
    ) -> storage_pb2.GetChannelHistoryResponse:
        """A page of messages, oldest first: after a sequence number or time, or the newest before one."""
        request = storage_pb2.GetChannelHistoryRequest(
            channel_id=channel_id, after_seq=after_seq, before_seq=before_seq, limit=limit
        )
        if after_time is not None:
            request.after_time.FromDatetime(after_time)
        if before_time is not None:
            request.before_time.FromDatetime(before_time)
        response: storage_pb2.GetChannelHistoryResponse = await self._call(self._stub.GetHistory, request)
        if self.e2ee is not None:
            for message in response.messages:
                await self._reveal(message)
        return response

    async def latest(self, channel_id: str, *, limit: int = 100) -> storage_pb2.GetChannelHistoryResponse:
        """The newest `limit` messages, oldest first; `has_more` says whether older ones exist
        (page back with `history(channel_id, before_seq=<the first one's channel_seq>)`)."""
        return await self.history(channel_id, before_seq=AFTER_EVERY_MESSAGE, limit=limit)

    def subscribe(self, channel_ids: Sequence[str] = (), *, resume: Mapping[str, int] | None = None) -> LiveStream:
        """Live events; `resume` maps channel ids to the last position read (LiveStream.positions).

        A channel resumed from position 0 is replayed from its first event.
        """
        request = gateway_pb2.SubscribeRequest(
            channel_ids=list(channel_ids),
            resume=[gateway_pb2.ResumeFrom(channel_id=c, after_position=p) for c, p in (resume or {}).items()],
        )
        reveal = self._reveal if self.e2ee is not None else None
        return LiveStream(self._stub.Subscribe(request, metadata=self._metadata()), positions=resume, reveal=reveal)

    async def _reveal(self, message: messaging_pb2.ChatMessage) -> None:
        """Decrypt an end-to-end encrypted message in place; one this device has no key for keeps
        its ciphertext (`message.body` still starts with "megolm.v1:")."""
        if message.body.startswith(BODY_PREFIX) and not message.redacted and self.e2ee is not None:
            with contextlib.suppress(UndecryptableMessage):
                message.body = await self.e2ee.decrypt(message)

    async def live(
        self,
        channel_ids: Sequence[str],
        *,
        resume: Mapping[str, int] | None = None,
        max_reconnects: int = 100,
        on_ready: Callable[[], None] | None = None,
    ) -> AsyncIterator[LiveEvent]:
        """Live events that survive dropped streams: reconnects and resumes where it stopped.

        A stream that ends because the gateway restarted, the network dropped or the client
        read too slowly (RESOURCE_EXHAUSTED) is opened again from the last positions read, so
        the caller sees every event once, in order; so is one whose access token expired, when
        the client renews its tokens (keep_logged_in). `on_ready` is called each time a stream
        is ready (live, nothing missed), so a client can say it is live again.
        """
        positions = dict(resume or {})
        reconnects = 0
        while True:
            await self._renew_if_expiring()
            opened_with = self.access_token
            stream = self.subscribe(channel_ids, resume=positions)
            try:
                await stream.ready()
                if on_ready is not None:
                    on_ready()
                async for event in stream.events():
                    positions = stream.positions
                    yield event
                    reconnects = 0
            except ParleyError as exc:
                if reconnects >= max_reconnects:
                    raise
                if await self.renewed_after(exc, opened_with):
                    positions, reconnects = stream.positions, reconnects + 1
                    continue  # the new token is good now: no back-off
                if exc.code not in RESUMABLE:
                    raise
            finally:
                stream.cancel()
            positions = stream.positions
            reconnects += 1
            await asyncio.sleep(min(0.1 * 2**reconnects, 5.0))

    # --- end-to-end encryption ---------------------------------------------------------------

    async def enable_e2ee(
        self, device_id: str = "", *, store: DeviceStore | None = None, one_time_keys: int = 20
    ) -> E2eeDevice:
        """Make this client a device; sends to encrypted channels are then encrypted.

        With a `store` that already holds a device, that device comes back (same keys, sessions
        and pinned keys of others; nothing is published). Otherwise a new device `device_id`
        (default: a random one) publishes its keys, and the store, if any, keeps it.
        """
        if store is not None and store.exists():
            self.e2ee = store.load(self)
            return self.e2ee
        device = E2eeDevice(self, device_id or f"dev-{uuid.uuid4().hex[:12]}")
        if store is not None:
            device.changed = lambda: store.save(device)
        await device.publish(one_time_keys)
        self.e2ee = device
        return device

    async def read(self, message: messaging_pb2.ChatMessage) -> str:
        """The text of a message: decrypted on this device when it is end-to-end encrypted."""
        if not message.body.startswith(BODY_PREFIX) or message.redacted:
            return message.body
        if self.e2ee is None:
            raise UndecryptableMessage("this client has no device keys: call enable_e2ee() first")
        return await self.e2ee.decrypt(message)

    async def _sealed(self, channel_id: str, body: str) -> str:
        """The body as sent: Megolm ciphertext from this device when the channel is encrypted."""
        if self.e2ee is None:
            return body
        channel = await self._channel_info(channel_id)
        return await self.e2ee.encrypt(channel, body) if channel.encrypted else body

    async def _channel_info(self, channel_id: str) -> messaging_pb2.Channel:
        for channel in await self.my_channels():
            if channel.channel_id == channel_id:
                return channel
        raise ParleyError(grpc.StatusCode.PERMISSION_DENIED, "you are not a member of this channel; join it first")

    async def leave_channel(self, channel_id: str) -> messaging_pb2.Channel:
        channel: messaging_pb2.Channel = await self._call(
            self._stub.LeaveChannel, messaging_pb2.LeaveChannelRequest(channel_id=channel_id)
        )
        return channel

    async def publish_device_keys(
        self, *, device_id: str, curve25519: bytes, ed25519: bytes, signature: bytes, display_name: str = ""
    ) -> auth_pb2.Device:
        """Register a device's identity keys in auth's key directory (E2eeDevice.publish does this)."""
        request = auth_pb2.PublishDeviceKeysRequest(
            device_id=device_id, curve25519=curve25519, ed25519=ed25519, signature=signature, display_name=display_name
        )
        device: auth_pb2.Device = await self._call(self._stub.PublishDeviceKeys, request)
        return device

    async def upload_one_time_keys(
        self, device_id: str, keys: Sequence[auth_pb2.OneTimeKey], *, fallback_key: auth_pb2.OneTimeKey | None = None
    ) -> int:
        request = auth_pb2.UploadOneTimeKeysRequest(device_id=device_id, keys=keys, fallback_key=fallback_key)
        response: auth_pb2.UploadOneTimeKeysResponse = await self._call(self._stub.UploadOneTimeKeys, request)
        return response.one_time_keys_left

    async def list_devices(self, user_ids: Sequence[str]) -> list[auth_pb2.Device]:
        """The devices of these users (unknown users have none)."""
        request = auth_pb2.ListDevicesRequest(user_ids=list(user_ids))
        response: auth_pb2.ListDevicesResponse = await self._call(self._stub.ListDevices, request)
        return list(response.devices)

    async def claim_one_time_key(self, user_id: str, device_id: str) -> auth_pb2.ClaimedOneTimeKey:
        request = auth_pb2.ClaimOneTimeKeyRequest(user_id=user_id, device_id=device_id)
        response: auth_pb2.ClaimedOneTimeKey = await self._call(self._stub.ClaimOneTimeKey, request)
        return response

    async def remove_device(self, device_id: str) -> None:
        """Remove one of your own devices: its keys and queued messages go; others stop encrypting to it."""
        await self._call(self._stub.RemoveDevice, auth_pb2.RemoveDeviceRequest(device_id=device_id))

    async def send_to_device(self, messages: Sequence[messaging_pb2.ToDeviceMessage]) -> None:
        await self._call(self._stub.SendToDevice, messaging_pb2.SendToDeviceRequest(messages=messages))

    async def fetch_to_device(self, device_id: str, *, after_queue_seq: int) -> list[messaging_pb2.ToDeviceMessage]:
        request = messaging_pb2.FetchToDeviceRequest(device_id=device_id, after_queue_seq=after_queue_seq)
        response: messaging_pb2.FetchToDeviceResponse = await self._call(self._stub.FetchToDevice, request)
        return list(response.messages)

    async def reply(
        self, channel_id: str, root_seq: int, body: str, *, idempotency_key: str | None = None
    ) -> messaging_pb2.ChatMessage:
        """Send a reply in the thread of message `root_seq`."""
        return await self.send(channel_id, body, idempotency_key=idempotency_key, thread_root_seq=root_seq)

    async def thread(self, channel_id: str, root_seq: int) -> messaging_pb2.ListThreadResponse:
        """The root and every reply of a thread, oldest first (read page by page)."""
        request = messaging_pb2.ListThreadRequest(channel_id=channel_id, root_seq=root_seq)
        response: messaging_pb2.ListThreadResponse = await self._call(self._stub.ListThread, request)
        while response.has_more and response.replies:
            request.after_seq = response.replies[-1].channel_seq
            page: messaging_pb2.ListThreadResponse = await self._call(self._stub.ListThread, request)
            response.replies.extend(page.replies)
            response.has_more = page.has_more
        if self.e2ee is not None:
            for message in (response.root, *response.replies):
                await self._reveal(message)
        return response

    async def react(
        self, channel_id: str, channel_seq: int, emoji: str, *, remove: bool = False
    ) -> messaging_pb2.ChatMessage:
        """`emoji`: one emoji of Unicode's list (👍, 👍🏽, 🇫🇷) or its `:shortcode:` (`:thumbs_up:`, `:+1:`),
        stored as the emoji; anything else is INVALID_ARGUMENT saying what is accepted."""
        request = messaging_pb2.ReactRequest(channel_id=channel_id, channel_seq=channel_seq, emoji=emoji, remove=remove)
        message: messaging_pb2.ChatMessage = await self._write(self._stub.React, request, timeout=WRITE_TIMEOUT_S)
        return message

    async def mark_read(self, channel_id: str, channel_seq: int) -> messaging_pb2.Channel:
        """Move the caller's read marker forward; the channel then reports fewer unread messages."""
        request = messaging_pb2.MarkReadRequest(channel_id=channel_id, channel_seq=channel_seq)
        channel: messaging_pb2.Channel = await self._write(self._stub.MarkRead, request, timeout=WRITE_TIMEOUT_S)
        return channel

    async def edit(self, channel_id: str, channel_seq: int, body: str) -> messaging_pb2.ChatMessage:
        """Replace a message's text; in an end-to-end encrypted channel the new text is encrypted
        on this device like a new message (the server takes only ciphertext there)."""
        request = messaging_pb2.EditMessageRequest(
            channel_id=channel_id, channel_seq=channel_seq, body=await self._sealed(channel_id, body)
        )
        message: messaging_pb2.ChatMessage = await self._write(self._stub.EditMessage, request, timeout=WRITE_TIMEOUT_S)
        return message

    async def redact(self, channel_id: str, channel_seq: int, *, reason: str = "") -> messaging_pb2.ChatMessage:
        request = messaging_pb2.RedactMessageRequest(channel_id=channel_id, channel_seq=channel_seq, reason=reason)
        message: messaging_pb2.ChatMessage = await self._write(
            self._stub.RedactMessage, request, timeout=WRITE_TIMEOUT_S
        )
        return message

    async def message_versions(self, channel_id: str, channel_seq: int) -> list[str]:
        """Every text a message had (moderators only)."""
        request = messaging_pb2.ListMessageVersionsRequest(channel_id=channel_id, channel_seq=channel_seq)
        response: messaging_pb2.ListMessageVersionsResponse = await self._call(self._stub.ListMessageVersions, request)
        return list(response.bodies)
