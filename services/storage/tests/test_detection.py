"""Storage's anomaly detector against a running stack: each rule fires on a scripted attack and
stays quiet on normal traffic of the same length, and each response takes effect.

Every scenario runs its normal traffic first and the attack after it, on the same stream: the
detector reads each stream in order, so once the attack's finding exists the normal traffic was
judged too, and the findings counted then are all there will be (no waiting for an absence).
Auth is called as the gateway calls it, with the client's address in `x-parley-source`.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

import grpc
import pytest
from parley.auth.v1 import auth_pb2, auth_pb2_grpc
from parley.auth.v1.events_pb2 import SecurityEventRecorded
from parley.messaging.v1 import messaging_pb2
from parley.patch.v1 import patch_pb2, patch_pb2_grpc
from parley.storage.v1 import storage_pb2, storage_pb2_grpc
from parley.storage.v1.events_pb2 import AnomalyDetected

from parley_agent.gate_probes import PROBE_WORKERS
from parley_agent.probe import Prober
from parley_cli.publishing import publish_release
from parley_core.config import PEER_ADDRESS_ENV
from parley_core.envelope import decode
from parley_core.topology import ANOMALY_FILTER
from parley_storage.detection import AnomalyKind
from parley_testing.nats import NatsTestServer
from parley_testing.planning import delegated_publisher, plan_once_heard
from parley_testing.security import security_events
from parley_testing.stack import PASSWORD, TIMEOUT_S, Stack, bearer
from parley_testing.waiting import eventually, until

NEW_PASSWORD = "another-long-enough-passphrase"


async def anomalies(nats_server: NatsTestServer) -> list[AnomalyDetected]:
    """Every finding recorded so far, read from STORE as an auditor's tooling would."""
    nc = await nats_server.connect("platform")
    found: list[AnomalyDetected] = []
    try:
        sub = await nc.jetstream().subscribe(ANOMALY_FILTER, stream="STORE", ordered_consumer=True)
        try:
            while True:
                msg = await sub.next_msg(timeout=1.0)
                found.append(AnomalyDetected.FromString(decode(msg.data).payload))
        except TimeoutError:
            pass
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()
    return found


async def first_of(nats_server: NatsTestServer, kind: str) -> list[AnomalyDetected]:
    """Waits for a finding of `kind`; returns every finding recorded by then."""

    async def probe() -> list[AnomalyDetected] | None:
        found = await anomalies(nats_server)
        return found if any(a.kind == kind for a in found) else None

    found = await eventually(probe, f"an AnomalyDetected of kind {kind}", TIMEOUT_S)
    # The report (pytest -s): everything recorded by then; each test asserts the attack's is all
    # (false positives: the rest).
    print(f"\n[detection] awaiting {kind}: {len(found)} finding(s): {[f'{a.kind} {a.subject}' for a in found]}")
    return found


def source(address: str, token: str = "") -> tuple[tuple[str, str], ...]:
    return (("x-parley-source", address), *(bearer(token) if token else ()))


async def login(stack: Stack, username: str, address: str) -> auth_pb2.LoginResponse:
    request = auth_pb2.LoginRequest(username=username, password=PASSWORD)
    return await stack.auth_as_gateway().Login(request, metadata=source(address), timeout=TIMEOUT_S)


async def test_password_spraying_from_one_source_and_not_typos_from_many(
    stack: Stack, nats_server: NatsTestServer
) -> None:
    auth = stack.auth_as_gateway()
    owner = f"owner{uuid.uuid4().hex[:6]}"
    await stack.create_user(owner, "member")

    async def fail(username: str, address: str) -> None:
        request = auth_pb2.LoginRequest(username=username, password="wrong-password-guess")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await auth.Login(request, metadata=source(address), timeout=TIMEOUT_S)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # Normal: 10 failed logins, each user's typo from their own address.
    for n in range(10):
        await fail(f"typo{n}", f"198.51.100.{n}")
    # The attack: one guess at each of 10 accounts from one address.
    for n in range(10):
        await fail(f"victim{n}", "203.0.113.9")
    found = await first_of(nats_server, AnomalyKind.PASSWORD_SPRAYING)
    assert [(a.kind, a.source) for a in found] == [(AnomalyKind.PASSWORD_SPRAYING, "203.0.113.9")]  # false positives: 0
    [spraying] = found
    assert spraying.evidence["accounts"] == "10"
    assert spraying.response == "slow_source"
    assert "10 different accounts" in spraying.why
    # The response: auth holds back that address's logins, even with the right password (its
    # own lockout, at 50 failures an address, was far away), and no other address's.

    async def slowed() -> list[SecurityEventRecorded] | None:
        return await security_events(nats_server, "source_slowed") or None

    [record] = await eventually(slowed, "auth's record of the slowed source", TIMEOUT_S)
    assert record.source == "203.0.113.9"
    assert re.match(r"until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC: ", record.detail), record.detail  # not epoch
    assert record.actor == "service:storage"
    with pytest.raises(grpc.aio.AioRpcError) as held:
        await login(stack, owner, "203.0.113.9")
    assert held.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "suspicious activity" in (held.value.details() or "")
    await login(stack, owner, "198.51.100.77")


async def test_an_administrator_lifts_a_slowed_source(stack: Stack, nats_server: NatsTestServer) -> None:
    """`parley admin lift-slowdown` calls LiftSourceSlowdown as the platform identity, as here."""
    owner, member = f"owner{uuid.uuid4().hex[:6]}", f"member{uuid.uuid4().hex[:6]}"
    await stack.create_user(owner, "member")
    await stack.create_user(member, "member")
    auth = stack.auth_as_gateway()
    for n in range(10):  # spraying from one address
        with pytest.raises(grpc.aio.AioRpcError):
            await auth.Login(
                auth_pb2.LoginRequest(username=f"victim{n}", password="wrong-password-guess"),
                metadata=source("203.0.113.9"),
                timeout=TIMEOUT_S,
            )

    async def slowed() -> list[SecurityEventRecorded] | None:
        return await security_events(nats_server, "source_slowed") or None

    await eventually(slowed, "auth's record of the slowed source", TIMEOUT_S)
    with pytest.raises(grpc.aio.AioRpcError) as held:
        await login(stack, owner, "203.0.113.9")
    assert held.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    operator = auth_pb2_grpc.AuthServiceStub(stack.internal("auth", identity="platform"))
    # A member may not lift it: the permission is users.manage.
    member_session = await login(stack, member, "198.51.100.7")
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await auth.LiftSourceSlowdown(
            auth_pb2.LiftSourceSlowdownRequest(source="203.0.113.9"),
            metadata=source("198.51.100.7", member_session.access_token),
            timeout=TIMEOUT_S,
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # An address that is not slowed is named, with those that are.
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await operator.LiftSourceSlowdown(auth_pb2.LiftSourceSlowdownRequest(source="192.0.2.200"), timeout=TIMEOUT_S)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert "192.0.2.200 is not slowed down; addresses slowed now: 203.0.113.9" in (unknown.value.details() or "")
    assert not await security_events(nats_server, "source_slowdown_lifted")  # nothing half-written

    lifted = await operator.LiftSourceSlowdown(
        auth_pb2.LiftSourceSlowdownRequest(source="203.0.113.9", reason="the office NAT"), timeout=TIMEOUT_S
    )
    assert lifted.source == "203.0.113.9"
    assert lifted.was_slowed_until_unix > 0
    await login(stack, owner, "203.0.113.9")  # let through at once

    [record] = await security_events(nats_server, "source_slowdown_lifted")
    assert record.source == "203.0.113.9"
    assert record.actor == "platform"
    assert "the office NAT" in record.detail
    # Lifted is lifted: a second call finds nothing to lift.
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await operator.LiftSourceSlowdown(auth_pb2.LiftSourceSlowdownRequest(source="203.0.113.9"), timeout=TIMEOUT_S)
    assert again.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_sensitive_change_from_a_new_source_revokes_that_session(
    stack: Stack, nats_server: NatsTestServer
) -> None:
    normal = f"normal{uuid.uuid4().hex[:6]}"
    victim = f"victim{uuid.uuid4().hex[:6]}"
    for name in (normal, victim):
        await stack.create_user(name, "member")
    auth = stack.auth_as_gateway()

    async def change_password(session: auth_pb2.LoginResponse, address: str) -> None:
        request = auth_pb2.ChangePasswordRequest(current_password=PASSWORD, new_password=NEW_PASSWORD)
        await auth.ChangePassword(request, metadata=source(address, session.access_token), timeout=TIMEOUT_S)

    # Normal: two logins from the user's usual address, then a password change from it.
    await login(stack, normal, "10.0.0.1")
    usual = await login(stack, normal, "10.0.0.1")
    await change_password(usual, "10.0.0.1")
    # The attack: the victim's usual login, then one from an address never used, which changes
    # the password at once.
    await login(stack, victim, "10.0.0.2")
    intruder = await login(stack, victim, "192.0.2.66")
    await change_password(intruder, "192.0.2.66")

    found = await first_of(nats_server, AnomalyKind.NEW_SOURCE_SENSITIVE_CHANGE)
    assert [a.user_id for a in found] == [intruder.user_id]  # false positives: 0
    [anomaly] = found
    assert anomaly.session_id == intruder.session_id
    assert anomaly.evidence["new_source"] == "192.0.2.66"
    assert anomaly.response == "revoke_session"
    # The response: auth revoked the session, and every service refuses its tokens.
    gateway_access = stack.access("gateway")
    await until(lambda: gateway_access.is_revoked(intruder.session_id), "the intruder's session revoked", TIMEOUT_S)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await auth.Refresh(
            auth_pb2.RefreshRequest(refresh_token=intruder.refresh_token),
            metadata=source("192.0.2.66"),
            timeout=TIMEOUT_S,
        )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert not gateway_access.is_revoked(usual.session_id)


async def test_one_session_used_from_two_sources_is_revoked(stack: Stack, nats_server: NatsTestServer) -> None:
    normal = f"normal{uuid.uuid4().hex[:6]}"
    victim = f"victim{uuid.uuid4().hex[:6]}"
    for name in (normal, victim):
        await stack.create_user(name, "member")
    auth = stack.auth_as_gateway()

    async def refresh(session: auth_pb2.LoginResponse, address: str) -> auth_pb2.LoginResponse:
        request = auth_pb2.RefreshRequest(refresh_token=session.refresh_token)
        return await auth.Refresh(request, metadata=source(address), timeout=TIMEOUT_S)

    # Normal: a login and two refreshes from the same address.
    kept = await login(stack, normal, "10.0.0.1")
    await refresh(await refresh(kept, "10.0.0.1"), "10.0.0.1")
    # The attack: the victim's refresh token replayed from elsewhere a moment after the login.
    stolen = await login(stack, victim, "10.0.0.2")
    await refresh(stolen, "192.0.2.77")

    found = await first_of(nats_server, AnomalyKind.SESSION_TWO_SOURCES)
    assert [a.session_id for a in found] == [stolen.session_id]  # false positives: 0
    assert found[0].evidence["first_source"] == "10.0.0.2"
    assert found[0].evidence["second_source"] == "192.0.2.77"
    gateway_access = stack.access("gateway")
    await until(lambda: gateway_access.is_revoked(stolen.session_id), "the stolen session revoked", TIMEOUT_S)
    assert not gateway_access.is_revoked(kept.session_id)


@pytest.fixture
def small_rate_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    """A floor of 20 messages in an hour-long bucket: one bucket for the whole test."""
    monkeypatch.setenv("PARLEY_DETECT_RATE_FLOOR", "20")
    monkeypatch.setenv("PARLEY_DETECT_RATE_BUCKET_S", "3600")


async def test_a_burst_of_sends_and_not_a_chat(
    small_rate_floor: None, stack: Stack, nats_server: NatsTestServer
) -> None:
    talker = f"talker{uuid.uuid4().hex[:6]}"
    flooder = f"flooder{uuid.uuid4().hex[:6]}"
    for name in (talker, flooder):
        await stack.create_user(name, "member")
    gateway = stack.gateway()
    talker_md = bearer((await stack.login(talker)).access_token)
    flooding = await stack.login(flooder)
    flooder_md = bearer(flooding.access_token)
    channel = await gateway.CreateChannel(
        messaging_pb2.CreateChannelRequest(name="general"), metadata=talker_md, timeout=TIMEOUT_S
    )

    async def send(md: tuple[tuple[str, str]], n: int, channel_id: str) -> None:
        for i in range(n):
            request = messaging_pb2.PostMessageRequest(
                channel_id=channel_id, body=f"m{i}", idempotency_key=uuid.uuid4().hex
            )
            await gateway.SendMessage(request, metadata=md, timeout=TIMEOUT_S)

    await send(talker_md, 20, channel.channel_id)  # at the floor: a busy chat, not a burst
    own = await gateway.CreateChannel(
        messaging_pb2.CreateChannelRequest(name="spam"), metadata=flooder_md, timeout=TIMEOUT_S
    )
    await send(flooder_md, 21, own.channel_id)
    found = await first_of(nats_server, AnomalyKind.SEND_RATE)
    assert [a.user_id for a in found] == [flooding.user_id]  # false positives: 0
    assert found[0].evidence["messages_in_bucket"] == "21"
    assert found[0].response == "alert"
    # Those sends came after storage started, so the detector had them from the archive consumer:
    # storage's one reader of MSG once its start-up replay of the history is done.
    await eventually(
        lambda: storage_reads_only(nats_server, "MSG", "storage-archive-msg"),
        "storage's start-up replay of MSG gone, its archive consumer left",
        TIMEOUT_S,
    )


async def storage_reads_only(nats_server: NatsTestServer, stream: str, consumer: str) -> bool | None:
    """True once `consumer` is storage's one consumer on `stream`, as the server lists them."""
    nc = await nats_server.connect("platform")
    try:
        infos = await nc.jetstream().consumers_info(stream)
    finally:
        await nc.close()
    return True if sorted(i.name for i in infos if i.name.startswith("storage")) == [consumer] else None


async def test_the_roll_out_probers_sends_are_the_platforms_and_a_person_sending_as_much_is_found(
    small_rate_floor: None, stack: Stack, nats_server: NatsTestServer, tmp_path: Path
) -> None:
    """The node agent's prober (parley_agent.probe) as a messaging roll-out on a quiet platform
    runs it: its account made by the platform identity, its sends straight to the new instance.
    Over the rate floor, yet no finding; a person sending as much right after is found. The
    person's registration and sends come after the prober's on AUTH and on MSG, so once the
    person's finding exists the prober's were judged too."""
    messaging = f"127.0.0.1:{stack.ports['messaging']}"
    probe = Prober(
        pki=stack.pki,
        environment={
            PEER_ADDRESS_ENV["auth"]: f"127.0.0.1:{stack.ports['auth']}",
            PEER_ADDRESS_ENV["messaging"]: messaging,
        },
        state_file=tmp_path / "probe-messaging.json",
        host="test-host",
    )
    sends = 27  # over the floor of 20 in one bucket, from the agent's three workers at once

    async def worker() -> int:
        return sum([await probe.transaction("messaging", messaging) for _ in range(sends // PROBE_WORKERS)])

    assert sum(await asyncio.gather(*(worker() for _ in range(PROBE_WORKERS)))) == sends
    person = f"busy{uuid.uuid4().hex[:6]}"
    await stack.create_user(person, "member")
    login = await stack.login(person)
    md, gateway = bearer(login.access_token), stack.gateway()
    own = await gateway.CreateChannel(messaging_pb2.CreateChannelRequest(name="mine"), metadata=md, timeout=TIMEOUT_S)
    for i in range(sends):
        request = messaging_pb2.PostMessageRequest(
            channel_id=own.channel_id, body=f"m{i}", idempotency_key=uuid.uuid4().hex
        )
        await gateway.SendMessage(request, metadata=md, timeout=TIMEOUT_S)
    found = await first_of(nats_server, AnomalyKind.SEND_RATE)
    assert [a.user_id for a in found] == [login.user_id]  # the prober's: none
    assert found[0].evidence["messages_in_bucket"] == "21"


async def test_retention_of_a_day_and_not_of_a_month(stack: Stack, nats_server: NatsTestServer) -> None:
    owner = f"owner{uuid.uuid4().hex[:6]}"
    await stack.create_user(owner, "member")
    md = bearer((await stack.login(owner)).access_token)
    gateway = stack.gateway()
    channels: dict[str, str] = {}
    for name, days in (("usual", 30), ("forever", 0), ("wiped", 1)):
        channel = await gateway.CreateChannel(
            messaging_pb2.CreateChannelRequest(name=name), metadata=md, timeout=TIMEOUT_S
        )
        channels[channel.channel_id] = name
        await stack.set_retention(channel.channel_id, days)
    found = await first_of(nats_server, AnomalyKind.SHORT_RETENTION)
    assert [channels[a.evidence["channel_id"]] for a in found] == ["wiped"]  # false positives: 0
    assert found[0].evidence["days"] == "1"


@pytest.fixture
def three_erasures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_DETECT_ERASURE_COUNT", "3")


async def test_an_operator_erasing_many_accounts_and_not_people_erasing_their_own(
    three_erasures: None, stack: Stack, nats_server: NatsTestServer
) -> None:
    leavers = [await stack.create_user(f"leaver{n}{uuid.uuid4().hex[:6]}", "member") for n in range(6)]
    gateway = stack.gateway()
    for account in leavers[:3]:  # normal: three people erase their own accounts (art. 17)
        md = bearer((await stack.login(account.username)).access_token)
        request = storage_pb2.EraseUserDataRequest(user_id=account.user_id, reason="leaving")
        await gateway.EraseUserData(request, metadata=md, timeout=TIMEOUT_S)
    auth = auth_pb2_grpc.AuthServiceStub(stack.internal("auth", identity="platform"))
    operator = storage_pb2_grpc.StorageArchiveServiceStub(stack.internal("storage", identity="platform"))
    for account in leavers[3:]:  # the attack: one operator erases three accounts
        await auth.RequestErasure(auth_pb2.AccountActionRequest(user_id=account.user_id), timeout=TIMEOUT_S)
        await operator.EraseUserData(storage_pb2.EraseUserDataRequest(user_id=account.user_id), timeout=TIMEOUT_S)
    found = await first_of(nats_server, AnomalyKind.MASS_ERASURE)
    assert [(a.kind, a.subject) for a in found] == [(AnomalyKind.MASS_ERASURE, "actor:platform")]  # false positives: 0
    assert found[0].evidence["erased_accounts"] == "3"
    assert set(found[0].evidence["user_ids"].split(",")) == {a.user_id for a in leavers[3:]}
    assert found[0].response == "alert"


@pytest.fixture
def step_up_response(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_DETECT_RESPONSES", '{"session_two_sources": "step_up"}')


async def test_a_step_up_response_limits_the_session_until_the_user_logs_in_again(
    step_up_response: None, stack: Stack, nats_server: NatsTestServer
) -> None:
    victim = f"victim{uuid.uuid4().hex[:6]}"
    await stack.create_user(victim, "member")
    auth = stack.auth_as_gateway()
    gateway = stack.gateway()
    stolen = await login(stack, victim, "10.0.0.2")
    refreshed = await auth.Refresh(
        auth_pb2.RefreshRequest(refresh_token=stolen.refresh_token), metadata=source("192.0.2.77"), timeout=TIMEOUT_S
    )
    [found] = await first_of(nats_server, AnomalyKind.SESSION_TWO_SOURCES)
    assert found.response == "step_up"
    gateway_access = stack.access("gateway")
    await until(lambda: gateway_access.step_up_required(stolen.session_id), "the step-up applied", TIMEOUT_S)
    # The next call with the session's token is refused with the step-up demand ...
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await gateway.CreateChannel(
            messaging_pb2.CreateChannelRequest(name="after"), metadata=bearer(refreshed.access_token), timeout=TIMEOUT_S
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "log in again" in (refused.value.details() or "")
    assert not gateway_access.is_revoked(stolen.session_id)  # limited, not revoked
    # ... and a new login (the step-up) works as before.
    again = await stack.login(victim)
    await gateway.CreateChannel(
        messaging_pb2.CreateChannelRequest(name="after"), metadata=bearer(again.access_token), timeout=TIMEOUT_S
    )


@pytest.fixture
def small_burst_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Four channels or four people within the default ten minutes: a short scenario."""
    monkeypatch.setenv("PARLEY_DETECT_CHANNELS_JOINED", "4")
    monkeypatch.setenv("PARLEY_DETECT_USERS_MESSAGED", "4")


async def test_many_channels_joined_and_not_a_few(
    small_burst_thresholds: None, stack: Stack, nats_server: NatsTestServer
) -> None:
    owner, reader, crawler = (f"{role}{uuid.uuid4().hex[:6]}" for role in ("owner", "reader", "crawler"))
    for name in (owner, reader, crawler):
        await stack.create_user(name, "member")
    gateway = stack.gateway()
    owner_md = bearer((await stack.login(owner)).access_token)
    reader_md = bearer((await stack.login(reader)).access_token)
    crawling = await stack.login(crawler)
    channel_ids = [
        (
            await gateway.CreateChannel(
                messaging_pb2.CreateChannelRequest(name=f"team{n}"), metadata=owner_md, timeout=TIMEOUT_S
            )
        ).channel_id
        for n in range(6)
    ]

    async def join(md: tuple[tuple[str, str]], channel_id: str) -> None:
        request = messaging_pb2.JoinChannelRequest(channel_id=channel_id)
        await gateway.JoinChannel(request, metadata=md, timeout=TIMEOUT_S)

    for channel_id in channel_ids[:3]:  # normal: a new colleague joins their three team channels
        await join(reader_md, channel_id)
    for channel_id in channel_ids:  # the attack: every channel it can reach
        await join(bearer(crawling.access_token), channel_id)
    found = await first_of(nats_server, AnomalyKind.MANY_CHANNELS_JOINED)
    # false positives: 0
    assert [(a.kind, a.user_id) for a in found] == [(AnomalyKind.MANY_CHANNELS_JOINED, crawling.user_id)]
    assert found[0].evidence["channels"] == "4"
    assert found[0].response == "alert"
    assert set(found[0].evidence["channel_ids"].split(",")) <= set(channel_ids)


async def test_direct_messages_to_many_people_and_not_a_conversation(
    small_burst_thresholds: None, stack: Stack, nats_server: NatsTestServer
) -> None:
    talker, spammer = f"talker{uuid.uuid4().hex[:6]}", f"spammer{uuid.uuid4().hex[:6]}"
    people = [f"person{n}{uuid.uuid4().hex[:4]}" for n in range(5)]
    accounts = {name: await stack.create_user(name, "member") for name in (talker, spammer, *people)}
    gateway = stack.gateway()
    talker_md = bearer((await stack.login(talker)).access_token)
    spamming = await stack.login(spammer)

    async def direct(md: tuple[tuple[str, str]], to: list[str], messages: int) -> None:
        request = messaging_pb2.CreateDirectChannelRequest(user_ids=[accounts[name].user_id for name in to])
        channel = await gateway.CreateDirectChannel(request, metadata=md, timeout=TIMEOUT_S)
        for n in range(messages):
            post = messaging_pb2.PostMessageRequest(
                channel_id=channel.channel_id, body=f"hi {n}", idempotency_key=uuid.uuid4().hex
            )
            await gateway.SendMessage(post, metadata=md, timeout=TIMEOUT_S)

    # Normal: a long conversation with one colleague, a short one with a group of two.
    await direct(talker_md, people[:1], 8)
    await direct(talker_md, people[1:3], 2)
    # The attack: one message to each of five people.
    for name in people:
        await direct(bearer(spamming.access_token), [name], 1)
    found = await first_of(nats_server, AnomalyKind.MANY_USERS_MESSAGED)
    # false positives: 0
    assert [(a.kind, a.user_id) for a in found] == [(AnomalyKind.MANY_USERS_MESSAGED, spamming.user_id)]
    assert found[0].evidence["recipients"] == "4"
    assert found[0].response == "alert"


async def test_a_data_export_from_a_new_source_revokes_that_session(stack: Stack, nats_server: NatsTestServer) -> None:
    normal = f"normal{uuid.uuid4().hex[:6]}"
    victim = f"victim{uuid.uuid4().hex[:6]}"
    for name in (normal, victim):
        await stack.create_user(name, "member")
    gateway = stack.gateway()

    async def export(session: auth_pb2.LoginResponse) -> None:
        request = storage_pb2.ExportUserDataRequest(user_id=session.user_id)
        exported = await gateway.ExportUserData(request, metadata=bearer(session.access_token), timeout=TIMEOUT_S)
        assert exported.archive

    # Normal: two logins from the user's usual address, then an export.
    await login(stack, normal, "10.0.0.1")
    await export(await login(stack, normal, "10.0.0.1"))
    # The attack: the victim's usual login, then one from an address never used, which takes
    # everything the archive holds about them at once.
    usual = await login(stack, victim, "10.0.0.2")
    intruder = await login(stack, victim, "192.0.2.66")
    await export(intruder)

    found = await first_of(nats_server, AnomalyKind.NEW_SOURCE_SENSITIVE_CHANGE)
    assert [a.user_id for a in found] == [intruder.user_id]  # false positives: 0
    [anomaly] = found
    assert anomaly.evidence["change"] == "data exported"
    assert anomaly.session_id == intruder.session_id
    assert anomaly.response == "revoke_session"
    gateway_access = stack.access("gateway")
    await until(lambda: gateway_access.is_revoked(intruder.session_id), "the intruder's session revoked", TIMEOUT_S)
    assert not gateway_access.is_revoked(usual.session_id)


@pytest.fixture
def reviewed_rollouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The roll-out below is approved seconds after it is planned: only the approver's age is at issue."""
    monkeypatch.setenv("PARLEY_DETECT_ROLLOUT_MIN_REVIEW_S", "0.001")


async def plan_and_approve(stack: Stack) -> tuple[patch_pb2.Rollout, auth_pb2.Account]:
    """A release published by one operator, a roll-out planned by a second and approved at once
    by a third, made a moment ago; the roll-out and its approver."""
    await stack.create_user("pat", "operator")
    await stack.create_user("olga", "operator")
    newcomer = await stack.create_user("oscar", "operator")  # made a moment ago
    publisher = bearer((await stack.login("pat")).access_token)
    planner = bearer((await stack.login("olga")).access_token)
    approver = bearer((await stack.login("oscar")).access_token)
    registry: patch_pb2_grpc.PatchServiceAsyncStub = patch_pb2_grpc.PatchServiceStub(
        stack.internal("patch-registry", identity="platform")
    )
    signer = await delegated_publisher(registry, "messaging", metadata=publisher, timeout=TIMEOUT_S)
    await publish_release(
        registry,
        signer=signer,
        service="messaging",
        version="0.2.1",
        wheel_name="parley_messaging-0.2.1-py3-none-any.whl",
        wheel=b"not installed by this test",
        metadata=publisher,
        timeout=TIMEOUT_S,
    )

    request = patch_pb2.PlanRolloutRequest(service="messaging", to_version="0.2.1")
    planned = await plan_once_heard(registry, request, metadata=planner, timeout=TIMEOUT_S, what="a planned roll-out")
    await registry.ApproveRollout(
        patch_pb2.RolloutCommand(rollout_id=planned.rollout_id), metadata=approver, timeout=TIMEOUT_S
    )
    return planned, newcomer


async def test_a_rollout_approved_by_a_new_account(
    reviewed_rollouts: None, stack: Stack, nats_server: NatsTestServer
) -> None:
    planned, newcomer = await plan_and_approve(stack)
    found = await first_of(nats_server, AnomalyKind.NEW_ACCOUNT_APPROVAL)
    # not rushed either
    assert [(a.kind, a.user_id) for a in found] == [(AnomalyKind.NEW_ACCOUNT_APPROVAL, newcomer.user_id)]
    assert found[0].evidence["rollout_id"] == planned.rollout_id
    assert float(found[0].evidence["account_age_s"]) < 3600
    assert found[0].response == "alert"


@pytest.fixture
def veteran_approvers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every approver counts as old enough: only the time between planning and approval is at issue."""
    monkeypatch.setenv("PARLEY_DETECT_NEW_APPROVER_AGE_S", "0.001")


async def test_a_rollout_approved_seconds_after_it_was_planned(
    veteran_approvers: None, stack: Stack, nats_server: NatsTestServer
) -> None:
    """The same scenario as above judged on its review time (the default 10 minutes); with a
    review threshold below the seconds it took (the test above), it is not rushed."""
    planned, approver = await plan_and_approve(stack)
    found = await first_of(nats_server, AnomalyKind.RUSHED_ROLLOUT)
    assert [a.kind for a in found] == [AnomalyKind.RUSHED_ROLLOUT]  # not a new account's approval either
    assert found[0].evidence["rollout_id"] == planned.rollout_id
    assert found[0].evidence["approved_by"] == approver.user_id
    assert float(found[0].evidence["seconds_to_approval"]) < 600
    assert found[0].response == "alert"
