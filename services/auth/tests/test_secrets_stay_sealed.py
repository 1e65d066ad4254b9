"""No secret of auth's is readable on AUTH, the stream every service reads: with each service's
NATS credentials the whole stream holds none of a user's known secrets (password, its hash,
TOTP secret, recovery codes, refresh tokens, their digests, an invite code), and neither does
what a security auditor reads from the archive. Events written before auth sealed them keep
working, so an upgrade locks no one out."""

from __future__ import annotations

import base64
import time
import uuid

import grpc
import pytest
from parley.auth.v1 import auth_pb2, auth_pb2_grpc
from parley.auth.v1.events_pb2 import (
    PasswordChanged,
    SessionStarted,
    TotpEnrolled,
    TotpEnrolmentStarted,
    UserRegistered,
)
from parley.common.v1.envelope_pb2 import EventEnvelope
from parley.storage.v1 import storage_pb2, storage_pb2_grpc

from parley_auth import mfa
from parley_auth.passwords import hash_password
from parley_auth.service import session_subject
from parley_auth.sessions import digest, new_refresh_token
from parley_auth.usernames import username_key
from parley_core.bus import EventBus, ReceivedEvent
from parley_core.envelope import NewEvent, open_payload
from parley_core.secret_fields import holds_secrets
from parley_core.topology import SERVICES, STREAMS_BY_NAME, user_subject, username_subject
from parley_testing.nats import NatsTestServer
from parley_testing.stack import PASSWORD, TIMEOUT_S, Stack, bearer
from parley_testing.waiting import eventually, until

NEW_PASSWORD = "another-quite-long-passphrase-7"


async def raw_stream(nats_server: NatsTestServer, user: str, stream: str) -> bytes:
    """Every message of `stream` as `user` reads it live (the way its service does, through its
    own consumer): subjects, headers and envelopes, as bytes."""
    chunks: list[bytes] = []

    async def keep(event: ReceivedEvent) -> None:
        chunks.extend((event.subject.encode(), repr(event.headers).encode(), event.envelope.SerializeToString()))

    bus = EventBus(await nats_server.connect(user), service=user, producer=f"{user}@test")
    replay = await bus.replay(stream=stream, filter_subject=STREAMS_BY_NAME[stream].subjects[0], handler=keep)
    try:
        await replay.wait_caught_up(TIMEOUT_S)
    finally:
        await replay.stop()
    return b"".join(chunks)


def totp_secret(secret_base32: str) -> bytes:
    return base64.b32decode(secret_base32 + "=" * (-len(secret_base32) % 8))


async def a_life_of_secrets(stack: Stack) -> dict[str, bytes]:
    """Registration, logins, a refresh, TOTP enrolment, a recovery code spent, new recovery codes,
    a password change and an invitation; returns every secret that went by, by name."""
    gateway = stack.gateway()
    await stack.create_user("alice", "member")
    first = await stack.login("alice")
    refreshed = await gateway.Refresh(auth_pb2.RefreshRequest(refresh_token=first.refresh_token), timeout=TIMEOUT_S)
    token = bearer(refreshed.access_token)
    begun = await gateway.BeginTotpEnrolment(auth_pb2.BeginTotpEnrolmentRequest(), metadata=token, timeout=TIMEOUT_S)
    secret = totp_secret(begun.secret_base32)
    first_code = auth_pb2.ConfirmTotpEnrolmentRequest(totp_code=mfa.code_at(secret, time.time()))
    confirmed = await gateway.ConfirmTotpEnrolment(first_code, metadata=token, timeout=TIMEOUT_S)
    codes = list(confirmed.recovery_codes)
    second = await gateway.Login(
        auth_pb2.LoginRequest(username="alice", password=PASSWORD, recovery_code=codes[0]), timeout=TIMEOUT_S
    )
    token = bearer(second.access_token)
    regenerated = await gateway.RegenerateRecoveryCodes(
        auth_pb2.RegenerateRecoveryCodesRequest(password=PASSWORD), metadata=token, timeout=TIMEOUT_S
    )
    await gateway.ChangePassword(
        auth_pb2.ChangePasswordRequest(current_password=PASSWORD, new_password=NEW_PASSWORD),
        metadata=token,
        timeout=TIMEOUT_S,
    )
    platform = auth_pb2_grpc.AuthServiceStub(stack.internal("auth", identity="platform"))
    invite = await platform.CreateInvite(auth_pb2.CreateInviteRequest(role="guest"), timeout=TIMEOUT_S)
    found = {
        "password": PASSWORD.encode(),
        "new password": NEW_PASSWORD.encode(),
        "an argon2id hash": b"$argon2id$",
        "TOTP secret": secret,
        "TOTP secret (base32)": begun.secret_base32.encode(),
        "invite code": invite.invite_code.encode(),
    }
    for n, code in enumerate([*codes, *regenerated.recovery_codes]):
        found[f"recovery code {n}"] = code.encode()
        found[f"recovery code {n} digest"] = mfa.recovery_digest(code)
    for n, login in enumerate((first, refreshed, second)):
        found[f"refresh token {n}"] = login.refresh_token.encode()
        found[f"refresh token {n} digest"] = digest(login.refresh_token)
        found[f"refresh token {n} digest (hex)"] = digest(login.refresh_token).hex().encode()
    return found


def found_in(data: bytes, secrets: dict[str, bytes]) -> list[str]:
    return [name for name, value in secrets.items() if value in data]


async def test_no_reader_of_auth_finds_a_secret_live_or_in_the_archive(
    stack: Stack, nats_server: NatsTestServer
) -> None:
    secrets = await a_life_of_secrets(stack)
    readers = sorted({*STREAMS_BY_NAME["AUTH"].readers, STREAMS_BY_NAME["AUTH"].owner} & set(SERVICES))
    assert "gateway" in readers  # the internet-facing one among them
    for reader in readers:
        raw = await raw_stream(nats_server, reader, "AUTH")
        assert b"parley.auth.v1.UserRegistered" in raw  # the whole stream was read
        assert found_in(raw, secrets) == [], f"{reader} reads secrets on AUTH"

    # Through the archive, as a security auditor (every call that returns events).
    await stack.create_user("audrey", "security-auditor")
    auditor = bearer((await stack.login("audrey")).access_token)
    archive = storage_pb2_grpc.StorageArchiveServiceStub(stack.internal("storage", identity="gateway"))
    alice = await auth_pb2_grpc.AuthServiceStub(stack.internal("auth", identity="platform")).GetAccount(
        auth_pb2.GetAccountRequest(username="alice"), timeout=TIMEOUT_S
    )
    last = (await (await nats_server.connect("platform")).jetstream().stream_info("AUTH")).state.last_seq

    async def archived_auth() -> list[storage_pb2.ArchivedEvent] | None:
        page = await archive.ReadArchivedStream(
            storage_pb2.ReadArchivedStreamRequest(stream="AUTH", limit=1000), metadata=auditor, timeout=TIMEOUT_S
        )
        return list(page.events) if page.events and page.events[-1].stream_seq >= last else None

    events = await eventually(archived_auth, "the archive to hold the whole AUTH stream", TIMEOUT_S)
    events += (
        await archive.QueryAudit(
            storage_pb2.QueryAuditRequest(target=alice.user_id, limit=1000), metadata=auditor, timeout=TIMEOUT_S
        )
    ).events
    events += (
        await archive.GetAggregateEvents(
            storage_pb2.GetAggregateEventsRequest(aggregate_type="user", aggregate_id=alice.user_id),
            metadata=auditor,
            timeout=TIMEOUT_S,
        )
    ).events
    assert found_in(b"".join(e.envelope for e in events), secrets) == []
    payloads = [open_payload(EventEnvelope.FromString(e.envelope)) for e in events if e.envelope]
    assert {type(p).__name__ for p in payloads} >= {"UserRegistered", "SessionStarted", "TotpEnrolled"}
    assert [type(p).__name__ for p in payloads if holds_secrets(p)] == []  # not even sealed
    # Auth, which rebuilds from the archive, still gets its sealed secrets (and no plaintext).
    as_auth = storage_pb2_grpc.StorageArchiveServiceStub(stack.internal("storage", identity="auth"))
    own = await as_auth.ReadArchivedStream(
        storage_pb2.ReadArchivedStreamRequest(stream="AUTH", limit=1000), timeout=TIMEOUT_S
    )
    sealed = [open_payload(EventEnvelope.FromString(e.envelope)) for e in own.events if e.envelope]
    assert any(isinstance(p, UserRegistered) and p.sealed_password_hash for p in sealed)
    assert found_in(b"".join(e.envelope for e in own.events), secrets) == []


async def test_events_written_before_sealing_still_work(stack: Stack, nats_server: NatsTestServer) -> None:
    """An account, a session and recovery codes as a version before the sealing wrote them
    (plaintext hash and digests), appended here with the platform's credential: after the
    upgrade the user logs in, refreshes and uses a recovery code as before."""
    bus = EventBus(await nats_server.connect("platform"), service="auth", producer="auth@0.1.0")
    user_id, name = uuid.uuid4().hex, "olduser"
    old_hash = await hash_password(PASSWORD)
    registered = UserRegistered(user_id=user_id, username=name, password_hash=old_hash, role="member")
    await bus.append(
        username_subject(username_key(name)),
        NewEvent(aggregate_type="user", aggregate_id=user_id, payload=registered, actor=f"user:{user_id}"),
        aggregate_version=1,
        expected_last_subject_seq=0,
    )
    auth = stack.app("auth")
    await until(lambda: auth.accounts.find(name) is not None, "auth to apply the old registration", TIMEOUT_S)
    gateway = stack.gateway()
    login = await gateway.Login(auth_pb2.LoginRequest(username=name, password=PASSWORD), timeout=TIMEOUT_S)
    assert login.user_id == user_id

    session_id = uuid.uuid4().hex
    refresh = new_refresh_token(session_id)
    started = SessionStarted(session_id=session_id, user_id=user_id, refresh_token_sha256=digest(refresh), source="x")
    await bus.append(
        session_subject(session_id),
        NewEvent(aggregate_type="session", aggregate_id=session_id, payload=started, actor=f"user:{user_id}"),
        aggregate_version=1,
        expected_last_subject_seq=0,
    )
    await until(lambda: auth.sessions.get(session_id) is not None, "auth to apply the old session", TIMEOUT_S)
    renewed = await gateway.Refresh(auth_pb2.RefreshRequest(refresh_token=refresh), timeout=TIMEOUT_S)
    assert renewed.session_id == session_id

    # TOTP secrets were sealed already; recovery digests and password hashes were not.
    codes = mfa.new_recovery_codes()
    assert auth._sealer is not None
    old_events = (
        TotpEnrolmentStarted(user_id=user_id, sealed_secret=auth._sealer.seal(mfa.new_secret(), user_id)),
        TotpEnrolled(user_id=user_id, recovery_code_sha256=[mfa.recovery_digest(c) for c in codes]),
        PasswordChanged(user_id=user_id, password_hash=await hash_password(NEW_PASSWORD)),
    )
    account = auth.accounts.by_id(user_id)
    for payload in old_events:
        version, seq = account.user_version, account.user_seq
        await bus.append(
            user_subject(user_id),
            NewEvent(aggregate_type="user", aggregate_id=user_id, payload=payload, actor=f"user:{user_id}"),
            aggregate_version=version + 1,
            expected_last_subject_seq=seq,
        )
        await until(lambda v=version: account.user_version > v, "auth to apply the old user event", TIMEOUT_S)
    with_code = await gateway.Login(
        auth_pb2.LoginRequest(username=name, password=NEW_PASSWORD, recovery_code=codes[3]), timeout=TIMEOUT_S
    )
    assert with_code.user_id == user_id
    with pytest.raises(grpc.aio.AioRpcError) as spent:  # its RecoveryCodeUsed is sealed, and applied
        await gateway.Login(
            auth_pb2.LoginRequest(username=name, password=NEW_PASSWORD, recovery_code=codes[3]), timeout=TIMEOUT_S
        )
    assert spent.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_password_typed_as_the_username_reaches_no_stream(stack: Stack, nats_server: NatsTestServer) -> None:
    """People type their password into the name field. A failed login for a name that belongs to
    no account is counted and audited under a digest keyed by auth's sealing key: the text reaches
    neither AUTH (which every service reads) nor the audit trail, and the failures still lock."""
    await stack.create_user("alice", "member")
    typed = f"Correct-Horse-{uuid.uuid4().hex[:8]}!"
    gateway = stack.gateway()
    locked = None
    for _ in range(60):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gateway.Login(auth_pb2.LoginRequest(username=typed, password="not-the-password"), timeout=TIMEOUT_S)
        if refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            locked = refused.value
            break
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert locked is not None, "failures for a name that belongs to no account must still lock"
    with pytest.raises(grpc.aio.AioRpcError) as alice_failed:  # a real name stays readable for a SIEM
        await stack.login("alice", "not-alices-password")
    assert alice_failed.value.code() == grpc.StatusCode.UNAUTHENTICATED

    needles = {"typed": typed.encode(), "typed, case-folded": typed.casefold().encode()}
    for reader in sorted({*STREAMS_BY_NAME["AUTH"].readers, STREAMS_BY_NAME["AUTH"].owner} & set(SERVICES)):
        raw = await raw_stream(nats_server, reader, "AUTH")
        assert b"parley.auth.v1.LoginFailureCounted" in raw
        assert found_in(raw, needles) == [], f"{reader} reads the typed text on AUTH"
    sec = await raw_stream(nats_server, "platform", "SEC")
    assert b"unknown-name:" in sec  # the failures are audited, under the digest
    assert b"alice" in sec
    assert found_in(sec, needles) == []
