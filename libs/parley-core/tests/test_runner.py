"""The service runner end to end: a real `serve()` with mutual TLS, a real nats-server and a tiny app.

The app registers parley.messaging.v1.MessagingService with methods that fail on purpose or
block until the test releases them, so caller checks, error mapping and drain can be observed
from a client, as `parley status` and the gateway see them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from nats.aio.msg import Msg
from parley.auth.v1.events_pb2 import SigningKeyPublished, UserRegistered
from parley.fleet.v1.fleet_pb2 import InstanceHeartbeat
from parley.messaging.v1 import messaging_pb2, messaging_pb2_grpc

from parley_core.bus import EventBus, ReceivedEvent
from parley_core.config import Settings
from parley_core.envelope import NewEvent, open_payload
from parley_core.errors import NotFound
from parley_core.grpc_channel import secure_channel
from parley_core.pki import Pki
from parley_core.runner import RunContext, serve
from parley_core.tokens import ALGORITHM, AUDIENCE, ISSUER
from parley_core.topology import (
    AUTH_FILTER,
    HEARTBEAT_READER,
    STREAMS_BY_NAME,
    heartbeat_subject,
    signing_key_subject,
    user_subject,
)
from parley_testing.nats import NatsTestServer
from parley_testing.sockets import closed_by_server
from parley_testing.waiting import eventually, until

pytestmark = pytest.mark.asyncio

TIMEOUT_S = 10.0
HANDSHAKE_TIMEOUT_S = 5.0  # far below gRPC's own 120 s, well above a handshake on a busy machine
SERVICE = "messaging"
MESSAGING = messaging_pb2.DESCRIPTOR.services_by_name["MessagingService"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
POISON = "poison"  # the username the scripted app's projection fails on


class ScriptedMessaging(messaging_pb2_grpc.MessagingServiceServicer):
    """Each method exercises one path through the runner's interceptor."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def CreateChannel(
        self, request: messaging_pb2.CreateChannelRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> messaging_pb2.Channel:
        raise NotFound("x")

    async def JoinChannel(
        self, request: messaging_pb2.JoinChannelRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> messaging_pb2.Channel:
        raise RuntimeError("secret-internal-detail")

    async def ListMyChannels(
        self, request: messaging_pb2.ListMyChannelsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> messaging_pb2.ListMyChannelsResponse:
        """In flight until the test releases it."""
        self.entered.set()
        await self.release.wait()
        return messaging_pb2.ListMyChannelsResponse(channels=[messaging_pb2.Channel(channel_id="c1", name="one")])


@dataclass
class ScriptedApp:
    servicer: ScriptedMessaging = field(default_factory=ScriptedMessaging)
    started: bool = False
    stopped: bool = False

    async def start(self, ctx: RunContext) -> None:
        messaging_pb2_grpc.add_MessagingServiceServicer_to_server(self.servicer, ctx.server)
        ctx.add_service_name(MESSAGING)
        # A projection of AUTH with a bug, on the process's one replay of AUTH (started by the runner).
        ctx.bus.follow(stream="AUTH", filter_subject=AUTH_FILTER, handler=self._apply_auth)
        self.started = True

    async def _apply_auth(self, event: ReceivedEvent) -> None:
        payload = open_payload(event.envelope)
        if isinstance(payload, UserRegistered) and payload.username == POISON:
            raise RuntimeError("projection bug")

    async def stop(self) -> None:
        self.stopped = True


@dataclass
class RunningService:
    app: ScriptedApp
    stop: asyncio.Event
    task: asyncio.Task[int]
    port: int
    pki: Pki
    auth_bus: EventBus
    # A member's access token, so calls pass the runner's permission check (rbac).
    user: tuple[tuple[str, str], ...] = ()
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def channel(self, identity: str) -> grpc.aio.Channel:
        """A fresh mutual-TLS channel presenting `identity`'s certificate."""
        channel = secure_channel(self.pki, identity=identity, address=f"127.0.0.1:{self.port}", peer=SERVICE)
        self.channels.append(channel)
        return channel


@pytest_asyncio.fixture
async def running(nats_server: NatsTestServer, pki: Pki, tmp_path: Path) -> AsyncIterator[RunningService]:
    # serve() follows the auth signing keys; the auth service creates that stream.
    auth = await nats_server.connect("auth")
    auth_bus = EventBus(auth, service="auth", producer="auth@test")
    await auth_bus.ensure_streams([STREAMS_BY_NAME["AUTH"]])
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    published = SigningKeyPublished(key_id="test-key", algorithm=ALGORITHM, public_key=public)
    await auth_bus.append(
        signing_key_subject("test-key"),
        NewEvent(aggregate_type="signing_key", aggregate_id="test-key", payload=published, actor="test"),
        aggregate_version=1,
        expected_last_subject_seq=0,
    )
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u1", "role": "member", "iat": now, "exp": now + 600, "jti": "t1"}
    token = jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": "test-key"})
    # serve() ensures <data_dir>/pki; point it at the session CA that the broker trusts.
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "pki").symlink_to(pki.directory, target_is_directory=True)
    settings = Settings(
        service=SERVICE,
        data_dir=data_dir,
        nats_url=nats_server.url,
        nats_password=nats_server.passwords[SERVICE],
        listen_port=0,
        grace_seconds=TIMEOUT_S,
        client_handshake_timeout_seconds=HANDSHAKE_TIMEOUT_S,
    )
    app = ScriptedApp()
    stop = asyncio.Event()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(app, service=SERVICE, settings=settings, stop=stop, on_ready=ready.set_result))
    await asyncio.wait_for(asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED), TIMEOUT_S)
    if task.done():
        task.result()  # serve() failed before it was ready: show why
    service = RunningService(
        app=app,
        stop=stop,
        task=task,
        port=ready.result(),
        pki=pki,
        auth_bus=auth_bus,
        user=(("authorization", f"Bearer {token}"),),
    )
    try:
        yield service
    finally:
        app.servicer.release.set()
        stop.set()
        for channel in service.channels:
            await channel.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 3 * TIMEOUT_S)


async def test_health_reports_serving_for_the_server_and_each_service(running: RunningService) -> None:
    health = health_pb2_grpc.HealthStub(running.channel("platform"))

    overall = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S)
    messaging = await health.Check(health_pb2.HealthCheckRequest(service=MESSAGING), timeout=TIMEOUT_S)

    assert overall.status == SERVING
    assert messaging.status == SERVING
    assert running.app.started


async def test_a_projection_that_fails_on_an_event_turns_the_process_not_serving(
    running: RunningService, nats_server: NatsTestServer
) -> None:
    """The process's projection of AUTH halts on the event it failed to apply (it does not skip
    it): the server and each of its services answer NOT_SERVING from then on, and so do its
    heartbeats (the fleet view, a roll-out's health gate)."""
    beats: asyncio.Queue[InstanceHeartbeat] = asyncio.Queue()

    async def beat(msg: Msg) -> None:
        await beats.put(InstanceHeartbeat.FromString(msg.data))

    watcher = await nats_server.connect(HEARTBEAT_READER)  # the one account the heartbeats reach
    await watcher.subscribe(heartbeat_subject(SERVICE, "*"), cb=beat)
    health = health_pb2_grpc.HealthStub(running.channel("platform"))
    assert (await health.Check(health_pb2.HealthCheckRequest(service=MESSAGING), timeout=TIMEOUT_S)).status == SERVING

    poison = UserRegistered(user_id="u-poison", username=POISON)
    await running.auth_bus.append(
        user_subject("u-poison"),
        NewEvent(aggregate_type="user", aggregate_id="u-poison", payload=poison, actor="test"),
        aggregate_version=1,
        expected_last_subject_seq=0,
    )

    async def not_serving() -> bool | None:
        statuses = [
            (await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=TIMEOUT_S)).status
            for name in ("", MESSAGING)
        ]
        return True if statuses == [NOT_SERVING, NOT_SERVING] else None

    await eventually(not_serving, "NOT_SERVING after the halt", TIMEOUT_S)
    while (await asyncio.wait_for(beats.get(), 3 * TIMEOUT_S)).health != "NOT_SERVING":
        pass  # beats sent before the halt
    await watcher.close()


async def test_reflection_lists_the_services(running: RunningService) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(running.channel("platform"))

    async def ask() -> list[str]:
        call = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT_S
        )
        [response] = [r async for r in call]
        return [s.name for s in response.list_services_response.service]

    names = await ask()

    assert MESSAGING in names
    assert "grpc.health.v1.Health" in names
    assert "grpc.reflection.v1alpha.ServerReflection" in names


async def test_a_peer_not_allowed_to_call_the_service_is_refused(running: RunningService) -> None:
    auth_channel = running.channel("auth")
    messaging = messaging_pb2_grpc.MessagingServiceStub(auth_channel)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await messaging.CreateChannel(
            messaging_pb2.CreateChannelRequest(name="general"), metadata=running.user, timeout=TIMEOUT_S
        )

    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "auth" in (refused.value.details() or "")
    # Health stays open to every peer with a certificate from the CA.
    health = health_pb2_grpc.HealthStub(auth_channel)
    assert (await health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)).status == SERVING


async def test_an_allowed_peer_gets_the_domain_error_as_its_status(running: RunningService) -> None:
    for identity in ("gateway", "platform"):
        messaging = messaging_pb2_grpc.MessagingServiceStub(running.channel(identity))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await messaging.CreateChannel(
                messaging_pb2.CreateChannelRequest(name="general"), metadata=running.user, timeout=TIMEOUT_S
            )
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        assert refused.value.details() == "x"


async def test_each_call_is_checked_though_a_methods_handler_is_built_once(running: RunningService) -> None:
    """The interceptors' handler for a method is kept after its first call (PerMethodHandlers);
    who calls, and with what, is still decided call by call."""
    request = messaging_pb2.CreateChannelRequest(name="general")
    codes = []
    for identity in ("gateway", "auth", "platform", "auth", "gateway"):
        messaging = messaging_pb2_grpc.MessagingServiceStub(running.channel(identity))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await messaging.CreateChannel(request, metadata=running.user, timeout=TIMEOUT_S)
        codes.append(refused.value.code())
    denied, found = grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND
    assert codes == [found, denied, found, denied, found]


async def test_an_unexpected_error_is_internal_with_a_reference_and_no_trace(running: RunningService) -> None:
    messaging = messaging_pb2_grpc.MessagingServiceStub(running.channel("platform"))

    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await messaging.JoinChannel(
            messaging_pb2.JoinChannelRequest(channel_id="c1"), metadata=running.user, timeout=TIMEOUT_S
        )

    details = failed.value.details() or ""
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert details.startswith("internal error (reference ")
    assert "Traceback" not in details
    assert "secret-internal-detail" not in details
    assert "RuntimeError" not in details


async def test_a_client_without_a_certificate_is_refused(running: RunningService) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=running.pki.ca_pem())
    async with grpc.aio.secure_channel(
        f"127.0.0.1:{running.port}", credentials, options=[("grpc.ssl_target_name_override", SERVICE)]
    ) as anonymous:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health_pb2_grpc.HealthStub(anonymous).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_an_internal_port_closes_a_connection_that_never_starts_its_handshake(running: RunningService) -> None:
    """An insider who reaches an internal port without a certificate cannot hold connections by never speaking."""
    silent = socket.create_connection(("127.0.0.1", running.port))
    silent.setblocking(False)
    try:
        await until(
            lambda: closed_by_server(silent),
            "the internal server to close a connection without a handshake",
            timeout=60,
        )
    finally:
        silent.close()


async def test_drain_stops_serving_refuses_new_calls_and_finishes_in_flight_ones(running: RunningService) -> None:
    servicer = running.app.servicer
    messaging = messaging_pb2_grpc.MessagingServiceStub(running.channel("platform"))

    async def list_channels() -> messaging_pb2.ListMyChannelsResponse:
        return await messaging.ListMyChannels(
            messaging_pb2.ListMyChannelsRequest(), metadata=running.user, timeout=3 * TIMEOUT_S
        )

    in_flight = asyncio.create_task(list_channels())
    await asyncio.wait_for(servicer.entered.wait(), TIMEOUT_S)
    watch = health_pb2_grpc.HealthStub(running.channel("platform")).Watch(
        health_pb2.HealthCheckRequest(service=MESSAGING), timeout=3 * TIMEOUT_S
    )
    assert (await asyncio.wait_for(watch.read(), TIMEOUT_S)).status == SERVING

    running.stop.set()

    assert (await asyncio.wait_for(watch.read(), TIMEOUT_S)).status == NOT_SERVING
    watch.cancel()  # an open watch would otherwise hold the drain for the whole grace period

    async def refused(stub: messaging_pb2_grpc.MessagingServiceAsyncStub) -> grpc.StatusCode:
        """New calls are refused once the server stops accepting; poll until that happens."""
        while True:
            try:
                await stub.CreateChannel(messaging_pb2.CreateChannelRequest(name="late"), timeout=TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:  # NOT_FOUND: still accepted
                    return exc.code()
            await asyncio.sleep(0.05)

    # Neither on the connection that carries the in-flight call, nor on a new one.
    assert await asyncio.wait_for(refused(messaging), TIMEOUT_S) == grpc.StatusCode.UNAVAILABLE
    newcomer = messaging_pb2_grpc.MessagingServiceStub(running.channel("platform"))
    assert await asyncio.wait_for(refused(newcomer), TIMEOUT_S) == grpc.StatusCode.UNAVAILABLE
    assert not in_flight.done()
    assert not running.task.done()
    assert not running.app.stopped

    servicer.release.set()

    response = await asyncio.wait_for(in_flight, TIMEOUT_S)
    assert [c.channel_id for c in response.channels] == ["c1"]
    assert await asyncio.wait_for(running.task, TIMEOUT_S) == 0
    assert running.app.stopped


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xff\xff\xff",  # no valid field tag
        b"\x0a\x05ab",  # a string field longer than the bytes that follow
        b"\x0a\x02\xff\xfe",  # a string field that is not UTF-8
    ],
)
async def test_undecodable_bytes_are_an_invalid_argument_in_plain_words(running: RunningService, raw: bytes) -> None:
    channel = running.channel("platform")
    create = channel.unary_unary(f"/{MESSAGING}/CreateChannel")  # bytes in, bytes out

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await create(raw, metadata=running.user, timeout=TIMEOUT_S)

    details = refused.value.details() or ""
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details == f"the request is not a valid protobuf message of the type /{MESSAGING}/CreateChannel takes"
    assert "Error" not in details
    assert "class" not in details


async def test_a_number_or_time_out_of_range_is_refused_before_the_handler(running: RunningService) -> None:
    channel = running.channel("platform")
    raw_edit = channel.unary_unary(f"/{MESSAGING}/EditMessage")
    too_big = messaging_pb2.EditMessageRequest(channel_id="c1", channel_seq=2**63, body="x")

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await raw_edit(too_big.SerializeToString(), metadata=running.user, timeout=TIMEOUT_S)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == f"channel_seq must be between 0 and {2**63 - 1}; it is {2**63}"
