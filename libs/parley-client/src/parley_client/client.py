"""ParleyClient: the gateway's calls, typed, with the behaviour a user should not rebuild.

The plain calls (one request, one answer) are declared in plain_calls.py and the channel,
tokens and retries are the session's (session.py); here are the calls that add something:
logins that keep their tokens, sends and edits that encrypt, reads that decrypt, paged and
batched reads, keyed creations, and live streams that reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime

import grpc
from parley.auth.v1 import auth_pb2
from parley.gateway.v1 import gateway_pb2
from parley.messaging.v1 import messaging_pb2
from parley.storage.v1 import storage_pb2

from parley_client.device_store import DeviceStore
from parley_client.e2ee import BODY_PREFIX, E2eeDevice, UndecryptableMessage
from parley_client.errors import MFA_MISSING, MfaRequired, ParleyError
from parley_client.live import RESUMABLE, LiveEvent, LiveStream
from parley_client.plain_calls import PlainCalls
from parley_client.session import WRITE_TIMEOUT_S

EXPORT_TIMEOUT_S = 120.0  # export and erasure walk all of a user's archived events
LOOKUP_BATCH = 200  # auth's limit per LookupUsers call
# A before_seq past any channel's last message (the archive's sequence numbers are signed 64-bit).
AFTER_EVERY_MESSAGE = 2**63 - 1


async def _refresh(client: ParleyClient) -> None:
    await client.refresh()


class ParleyClient(PlainCalls):
    def __init__(self, channel: grpc.aio.Channel) -> None:
        super().__init__(channel)
        self.e2ee: E2eeDevice | None = None

    def keep_logged_in(self, renew: Callable[[ParleyClient], Awaitable[None]] | None = None) -> None:
        """Renew the access token before it expires, for as long as the session lasts: before a
        call, and when a live stream (`live`) ended because the token expired. `renew` replaces
        the default (`refresh`), e.g. to share one saved session between processes."""
        self._renew = renew or _refresh

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

    async def logout(self) -> None:
        await self._call(self._stub.Logout, auth_pb2.LogoutRequest())
        self.access_token = self.refresh_token = None
        self.expires_at = None

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
        request = messaging_pb2.CreateChannelRequest(
            name=name, encrypted=encrypted, private=private, hide_history_before_join=hide_history_before_join
        )
        return await self._keyed_write(
            self._stub.CreateChannel, request, idempotency_key=idempotency_key, timeout=timeout
        )

    async def create_direct(
        self,
        user_ids: Sequence[str],
        *,
        encrypted: bool = False,
        idempotency_key: str | None = None,
        timeout: float = WRITE_TIMEOUT_S,
    ) -> messaging_pb2.Channel:
        """A direct conversation with 1 to 7 others: fixed members, nobody moderates (created once, as above)."""
        request = messaging_pb2.CreateDirectChannelRequest(user_ids=list(user_ids), encrypted=encrypted)
        return await self._keyed_write(
            self._stub.CreateDirectChannel, request, idempotency_key=idempotency_key, timeout=timeout
        )

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
        request = messaging_pb2.PostMessageRequest(channel_id=channel_id, body=body, thread_root_seq=thread_root_seq)
        return await self._keyed_write(
            self._stub.SendMessage, request, idempotency_key=idempotency_key, timeout=timeout
        )

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

    async def edit(self, channel_id: str, channel_seq: int, body: str) -> messaging_pb2.ChatMessage:
        """Replace a message's text; in an end-to-end encrypted channel the new text is encrypted
        on this device like a new message (the server takes only ciphertext there)."""
        request = messaging_pb2.EditMessageRequest(
            channel_id=channel_id, channel_seq=channel_seq, body=await self._sealed(channel_id, body)
        )
        message: messaging_pb2.ChatMessage = await self._write(self._stub.EditMessage, request, timeout=WRITE_TIMEOUT_S)
        return message
