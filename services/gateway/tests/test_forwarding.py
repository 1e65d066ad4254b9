"""What the gateway forwards reaches the owning service as the client sent it, and the service's
answer reaches the client unchanged.

The services behind the gateway are stand-ins here: real gRPC servers over mutual TLS, with the
real services' certificates, that record each call (method, metadata, deadline) and refuse it
with a status of the test's choosing. The gateway, its nats-server and its token checks are real.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass
from parley.auth.v1 import auth_pb2
from parley.fleet.v1 import fleet_pb2
from parley.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from parley.messaging.v1 import messaging_pb2
from parley.patch.v1 import patch_pb2
from parley.storage.v1 import storage_pb2

from parley_core.bus import EventBus
from parley_core.pki import Pki
from parley_core.rbac import METHOD_PERMISSIONS, PUBLIC
from parley_core.sources import SOURCE_METADATA
from parley_core.topology import STREAMS_BY_NAME
from parley_gateway.domain.routes import ROUTES
from parley_gateway.limits import GatewayLimits
from parley_gateway.service import GatewayApp
from parley_testing.nats import NatsTestServer
from parley_testing.operators import OperatorTokens
from parley_testing.stack import served_settings, start_serving

TIMEOUT_S = 20.0
CALL_DEADLINE_S = 7.0
GATEWAY = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"]
UPSTREAMS: tuple[ServiceDescriptor, ...] = (
    auth_pb2.DESCRIPTOR.services_by_name["AuthService"],
    messaging_pb2.DESCRIPTOR.services_by_name["MessagingService"],
    messaging_pb2.DESCRIPTOR.services_by_name["DeviceKeyService"],
    storage_pb2.DESCRIPTOR.services_by_name["StorageArchiveService"],
    patch_pb2.DESCRIPTOR.services_by_name["PatchService"],
    fleet_pb2.DESCRIPTOR.services_by_name["FleetService"],
)
# Gateway calls that do more than pass the request on (their own tests cover them).
WITH_GATEWAY_LOGIC = {"EraseUserData"}
# Reads messaging's primary failed to answer, sent again on its stable door (no key: writes are not).
SENT_AGAIN = {"ListMyChannels", "ListMessageVersions", "ListThread"}
RENAMED = {"SendMessage": "/parley.messaging.v1.MessagingService/PostMessage"}  # an idle gateway's send
POST_MESSAGES = "/parley.messaging.v1.MessagingService/PostMessages"  # sends that waited, together
TRACE_ID = uuid.uuid4().hex
TRACEPARENT = f"00-{TRACE_ID}-{uuid.uuid4().hex[:16]}-01"


def upstream_of(method: MethodDescriptor) -> str | None:
    """The internal RPC a plain forward of `method` calls: the one of the same name and types."""
    if method.name in RENAMED:
        return RENAMED[method.name]
    if method.name in WITH_GATEWAY_LOGIC or method.server_streaming:
        return None
    for service in UPSTREAMS:
        target = service.methods_by_name.get(method.name)
        if target is not None and (target.input_type, target.output_type) == (method.input_type, method.output_type):
            return f"/{service.full_name}/{target.name}"
    return None


PASSED_ON = {m.name: target for m in GATEWAY.methods if (target := upstream_of(m)) is not None}


@dataclass(frozen=True)
class Seen:
    method: str
    metadata: dict[str, str]
    time_remaining: float | None
    request: bytes


@dataclass
class StandIn(grpc.GenericRpcHandler):
    """Any method of any service: records the call and refuses it with `code` and a message naming it."""

    code: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION
    calls: list[Seen] = field(default_factory=list)
    codes: dict[str, grpc.StatusCode] = field(default_factory=dict)  # a method refused otherwise

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        method = handler_call_details.method

        async def refuse(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
            self.calls.append(Seen(method, metadata, context.time_remaining(), request))
            code = self.codes.get(method, self.code)
            await context.abort(code, f"{code.name.lower()} from {method}")
            raise AssertionError("abort raises")

        return grpc.unary_unary_rpc_method_handler(refuse)


async def stand_in(pki: Pki, identity: str, handler: StandIn) -> tuple[grpc.aio.Server, str]:
    cert, key = pki.read(identity)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=pki.ca_pem(), require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    return server, f"127.0.0.1:{port}"


@dataclass
class Forwarding:
    gateway: gateway_pb2_grpc.GatewayStub
    tokens: OperatorTokens
    auth: StandIn
    messaging: StandIn
    stable_messaging: StandIn
    storage: StandIn
    registry: StandIn
    sent_authorization: str = ""

    def all_calls(self) -> list[Seen]:
        return [
            c for s in (self.auth, self.messaging, self.stable_messaging, self.storage, self.registry) for c in s.calls
        ]

    def forget(self) -> None:
        for s in (self.auth, self.messaging, self.stable_messaging, self.storage, self.registry):
            s.calls.clear()

    async def refusal(self, method: str, request: Any, role: str = "owner") -> grpc.aio.AioRpcError:
        self.sent_authorization = f"Bearer {self.tokens.token('forwarding-' + role, role)}"
        metadata = (("authorization", self.sent_authorization), ("traceparent", TRACEPARENT))
        call: Callable[..., Awaitable[Any]] = getattr(self.gateway, method)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(request, metadata=metadata, timeout=CALL_DEADLINE_S)
        return caught.value


@contextlib.asynccontextmanager
async def running_gateway(
    nats_server: NatsTestServer, pki: Pki, tmp_path: Path, *, registry: bool
) -> AsyncIterator[Forwarding]:
    tokens = OperatorTokens(key_id=f"forwarding-{uuid.uuid4().hex[:8]}")
    nc = await nats_server.connect("auth")
    bus = EventBus(nc, service="auth", producer="auth@test")
    await bus.ensure_streams([STREAMS_BY_NAME["AUTH"]])
    await tokens.publish(bus)
    handlers = {name: StandIn() for name in ("auth", "messaging", "stable", "storage", "registry")}
    peers = {"stable": "messaging", "registry": "patch-registry"}
    servers = {name: await stand_in(pki, peers.get(name, name), h) for name, h in handlers.items()}
    handlers["messaging"].code = grpc.StatusCode.UNAVAILABLE  # a primary going away: stable answers
    settings = served_settings(
        nats_server,
        pki,
        tmp_path,
        "gateway",
        auth_addr=servers["auth"][1],
        messaging_addr=servers["messaging"][1],
        messaging_stable_addr=servers["stable"][1],
        storage_addr=servers["storage"][1],
        registry_addr=servers["registry"][1] if registry else "",
        grace_seconds=1,
    )
    limits = GatewayLimits(source_rate=1000, source_burst=1000, user_rate=1000, user_burst=1000)
    served = await start_serving(GatewayApp(limits), service="gateway", settings=settings, client_facing=True)
    channel = grpc.aio.secure_channel(
        f"127.0.0.1:{served.port}",
        grpc.ssl_channel_credentials(root_certificates=pki.ca_pem()),
        options=[("grpc.ssl_target_name_override", "gateway")],
    )
    try:
        yield Forwarding(
            gateway_pb2_grpc.GatewayStub(channel),
            tokens,
            handlers["auth"],
            handlers["messaging"],
            handlers["stable"],
            handlers["storage"],
            handlers["registry"],
        )
    finally:
        await channel.close()
        await served.shutdown()
        for server, _ in servers.values():
            await server.stop(None)


@pytest_asyncio.fixture
async def forwarding(nats_server: NatsTestServer, pki: Pki, tmp_path: Path) -> AsyncIterator[Forwarding]:
    async with running_gateway(nats_server, pki, tmp_path, registry=True) as running:
        yield running


def request_of(method: MethodDescriptor) -> Any:
    return GetMessageClass(method.input_type)()


def test_every_gateway_rpc_is_served() -> None:
    """A new RPC in gateway.proto fails here until the gateway serves it (routes it or writes it)."""
    unserved = [
        m.name
        for m in GATEWAY.methods
        if getattr(GatewayApp, m.name) is getattr(gateway_pb2_grpc.GatewayServicer, m.name)
    ]
    assert unserved == []


def test_each_route_calls_its_services_rpc_of_the_same_name_and_messages() -> None:
    pool = descriptor_pool.Default()
    for name, route in ROUTES.items():
        method = GATEWAY.methods_by_name[name]
        target = pool.FindServiceByName(route.upstream.value).methods_by_name.get(name)
        assert target is not None, f"{route.upstream.value} has no {name}"
        assert (target.input_type, target.output_type) == (method.input_type, method.output_type), name
        assert not method.server_streaming, name
    assert {name for name, route in ROUTES.items() if route.anonymous} == {"Register", "Login", "Refresh"}


def test_calls_without_a_token_at_the_gateway_are_the_public_ones() -> None:
    public = {m.name for m in GATEWAY.methods if METHOD_PERMISSIONS.get(f"/{GATEWAY.full_name}/{m.name}", "") is PUBLIC}
    assert public == {"Register", "Login", "Refresh"}


async def test_a_forwarded_call_reaches_its_service_as_sent_and_its_answer_comes_back_unchanged(
    forwarding: Forwarding,
) -> None:
    # Messaging's primary answers UNAVAILABLE (see running_gateway): its calls are checked on the
    # stable door, where a read or a keyed write is sent again, and through the hidden message.
    assert len(PASSED_ON) > 50
    for name, target in sorted(PASSED_ON.items()):
        forwarding.forget()
        error = await forwarding.refusal(name, request_of(GATEWAY.methods_by_name[name]))
        calls = forwarding.all_calls()
        assert calls, f"{name} reached no service"
        for seen in calls:
            assert seen.method == target, name
            assert seen.metadata["authorization"] == forwarding.sent_authorization, name
            assert seen.metadata[SOURCE_METADATA].startswith("ipv4:127.0.0.1"), name
            assert seen.metadata["traceparent"].split("-")[1] == TRACE_ID, name
            assert seen.time_remaining is not None
            assert 0 < seen.time_remaining <= CALL_DEADLINE_S + 0.5, name  # the caller's, not the default 10 s
        if forwarding.messaging.calls and name not in SENT_AGAIN:
            assert calls == forwarding.messaging.calls, name
            assert error.code() == grpc.StatusCode.UNAVAILABLE, name
            assert error.details().startswith("the service is briefly unavailable; retry shortly"), name
        else:
            assert len(calls) == (2 if name in SENT_AGAIN else 1), name
            assert (error.code(), error.details()) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                f"failed_precondition from {target}",
            ), name


async def test_a_write_is_sent_again_on_the_stable_door_only_with_its_idempotency_key(forwarding: Forwarding) -> None:
    for name, keyed in (
        ("CreateChannel", messaging_pb2.CreateChannelRequest(name="x", idempotency_key="k1")),
        ("CreateDirectChannel", messaging_pb2.CreateDirectChannelRequest(idempotency_key="k2")),
        ("SendMessage", messaging_pb2.PostMessageRequest(channel_id="c", idempotency_key="k3")),
    ):
        forwarding.forget()
        error = await forwarding.refusal(name, keyed)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, name
        assert [len(forwarding.messaging.calls), len(forwarding.stable_messaging.calls)] == [1, 1], name
        assert forwarding.stable_messaging.calls[0].metadata["authorization"] == forwarding.sent_authorization


def posted_items(calls: list[Seen]) -> list[messaging_pb2.PostItem]:
    return [
        item
        for call in calls
        if call.method == POST_MESSAGES
        for item in messaging_pb2.PostMessagesRequest.FromString(call.request).items
    ]


async def test_sends_that_wait_go_together_each_as_sent_and_keyed_ones_again_on_the_stable_door(
    forwarding: Forwarding,
) -> None:
    """Sends arriving while one is in flight go in one PostMessages call (send_batches), each item
    with its client's own token, trace and deadline; the primary's failure (UNAVAILABLE) sends the
    keyed ones again on the stable door, and each client gets its own answer."""
    authorization = f"Bearer {forwarding.tokens.token('forwarding-owner', 'owner')}"
    metadata = (("authorization", authorization), ("traceparent", TRACEPARENT))
    keys = ["", *(f"key-{n}" for n in range(8))]

    async def send(key: str) -> tuple[str, grpc.aio.AioRpcError]:
        request = messaging_pb2.PostMessageRequest(channel_id="c", body="b", idempotency_key=key)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await forwarding.gateway.SendMessage(request, metadata=metadata, timeout=CALL_DEADLINE_S)
        return key, caught.value

    answers = dict(await asyncio.gather(*(send(key) for key in keys)))

    batched = posted_items(forwarding.messaging.calls)
    assert batched, "sends that arrived while one was in flight went together"
    for item in batched:
        assert item.authorization == authorization
        assert item.traceparent.split("-")[1] == TRACE_ID
        assert 0 < item.timeout_ms <= CALL_DEADLINE_S * 1000
    assert all("authorization" not in c.metadata for c in forwarding.messaging.calls if c.method == POST_MESSAGES)
    keyed = sorted(i.request.idempotency_key for i in batched if i.request.idempotency_key)
    assert sorted(i.request.idempotency_key for i in posted_items(forwarding.stable_messaging.calls)) == keyed
    unkeyed = answers.pop("")
    assert unkeyed.code() == grpc.StatusCode.UNAVAILABLE
    assert unkeyed.details().startswith("the service is briefly unavailable; retry shortly")
    assert {error.code() for error in answers.values()} == {grpc.StatusCode.FAILED_PRECONDITION}


async def test_sends_that_wait_go_alone_to_a_messaging_that_takes_no_batches(forwarding: Forwarding) -> None:
    """A messaging instance of an earlier version (no PostMessages: UNIMPLEMENTED) is sent each
    waiting send by itself, and each client gets that call's answer."""
    forwarding.messaging.code = grpc.StatusCode.FAILED_PRECONDITION
    forwarding.messaging.codes[POST_MESSAGES] = grpc.StatusCode.UNIMPLEMENTED
    authorization = f"Bearer {forwarding.tokens.token('forwarding-owner', 'owner')}"
    sends = 8

    async def send(n: int) -> grpc.aio.AioRpcError:
        request = messaging_pb2.PostMessageRequest(channel_id="c", body="b", idempotency_key=f"key-{n}")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await forwarding.gateway.SendMessage(
                request, metadata=(("authorization", authorization),), timeout=CALL_DEADLINE_S
            )
        return caught.value

    answers = await asyncio.gather(*(send(n) for n in range(sends)))

    assert posted_items(forwarding.messaging.calls), "sends that arrived while one was in flight went together"
    assert [c.method for c in forwarding.messaging.calls].count(RENAMED["SendMessage"]) == sends
    assert {(a.code(), a.details()) for a in answers} == {
        (grpc.StatusCode.FAILED_PRECONDITION, f"failed_precondition from {RENAMED['SendMessage']}")
    }
    assert forwarding.stable_messaging.calls == []  # a refusal is not sent again


async def test_an_internal_failure_reaches_the_client_without_its_detail(forwarding: Forwarding) -> None:
    forwarding.auth.code = grpc.StatusCode.UNKNOWN
    error = await forwarding.refusal("ListSessions", auth_pb2.ListSessionsRequest())
    assert (error.code(), error.details()) == (grpc.StatusCode.UNKNOWN, "internal error")


async def test_a_console_change_needs_patches_rollout_before_the_registry_hears_of_it(forwarding: Forwarding) -> None:
    error = await forwarding.refusal("PlanRollout", patch_pb2.PlanRolloutRequest(), role="security-auditor")
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details().startswith("planning a roll-out needs"), error.details()
    error = await forwarding.refusal("QueryAudit", storage_pb2.QueryAuditRequest(), role="operator")
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details().startswith("querying the audit trail needs"), error.details()
    assert forwarding.all_calls() == []


async def test_without_a_registry_the_console_calls_say_so(
    nats_server: NatsTestServer, pki: Pki, tmp_path: Path
) -> None:
    async with running_gateway(nats_server, pki, tmp_path, registry=False) as forwarding:
        for name in ("ListInstances", "GetServiceHealth", "ListFindings", "GetRollout", "PauseRollout"):
            error = await forwarding.refusal(name, request_of(GATEWAY.methods_by_name[name]))
            assert error.code() == grpc.StatusCode.UNAVAILABLE, name
            assert (
                error.details()
                == "this platform runs no patch registry: fleet, findings and roll-outs are not available"
            )
        assert forwarding.all_calls() == []
