"""What a node agent's certificate reaches on its own (no user token), against real servers.

The first host's agent runs inside `parley up` with the platform identity (the operator's own
process). A joined host's agent holds a node-agent certificate (`parley host add` issues it, never
the platform's): it follows roll-outs through the registry, asks instances' health, and makes its
prober's account at auth. Neither holds a NATS user of its own. This test pins what each
certificate reaches alone, so a method that starts answering it (or stops) fails here until
docs/security.md and these lists agree.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from parley.auth.v1 import auth_pb2, auth_pb2_grpc
from parley.fleet.v1 import fleet_pb2
from parley.messaging.v1 import messaging_pb2
from parley.patch.v1 import patch_pb2
from parley.storage.v1 import storage_pb2

from parley_agent.probe import Prober, prober_username
from parley_auth.usernames import username_key
from parley_core.actor import Actor
from parley_core.config import PEER_ADDRESS_ENV
from parley_core.envelope import decode
from parley_core.grpc_channel import secure_channel
from parley_core.pki import Pki, issue_into, tooling_identity
from parley_core.rbac import METHOD_PERMISSIONS, NODE_AGENT_METHODS, PLATFORM_METHODS, PUBLIC
from parley_core.synthetic import is_synthetic_account
from parley_core.topology import NODE_AGENT, PLATFORM_USER, username_subject
from parley_testing.nats import NatsTestServer
from parley_testing.stack import TIMEOUT_S, Stack, running_stack

pytestmark = pytest.mark.asyncio

# Each internal service and the port that serves it.
SERVED_BY: dict[ServiceDescriptor, str] = {
    auth_pb2.DESCRIPTOR.services_by_name["AuthService"]: "auth",
    messaging_pb2.DESCRIPTOR.services_by_name["MessagingService"]: "messaging",
    messaging_pb2.DESCRIPTOR.services_by_name["DeviceKeyService"]: "messaging",
    storage_pb2.DESCRIPTOR.services_by_name["StorageService"]: "storage",
    storage_pb2.DESCRIPTOR.services_by_name["StorageArchiveService"]: "storage",
    fleet_pb2.DESCRIPTOR.services_by_name["FleetService"]: "patch-registry",
    patch_pb2.DESCRIPTOR.services_by_name["PatchService"]: "patch-registry",
}
REFUSED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
# Requests that get past validation to the caller's check (an empty one is INVALID_ARGUMENT first).
NAMED_REQUESTS = {
    "/parley.storage.v1.StorageArchiveService/ExportUserData": storage_pb2.ExportUserDataRequest(user_id="u1"),
    "/parley.storage.v1.StorageArchiveService/EraseUserData": storage_pb2.EraseUserDataRequest(user_id="u1"),
}
# A stream the certificate may open waits for its first item: past this it was let in.
STREAM_WAIT_S = 3.0

# Methods each service checks itself (rbac.SERVICE_CHECKED_METHODS) that take the platform
# identity without a token: the operator's whole archive, its KEK rotation and schema versions,
# and the registry's agent reports and base releases. Beside these: rbac.PLATFORM_METHODS and the
# public ones (registration, login, refresh).
AGENT_REPORTS = {
    "/parley.patch.v1.PatchService/ReportInstanceStarted",
    "/parley.patch.v1.PatchService/ReportInstanceDrained",
    "/parley.patch.v1.PatchService/ReportRolledBack",
    "/parley.patch.v1.PatchService/ReportInstanceExited",
}
SERVICE_CHECKED_FOR_THE_PLATFORM = AGENT_REPORTS | {
    "/parley.storage.v1.StorageArchiveService/ReadArchivedStream",
    "/parley.storage.v1.StorageArchiveService/GetAggregateEvents",
    "/parley.storage.v1.StorageArchiveService/GetArchiveLag",
    "/parley.storage.v1.StorageArchiveService/ExportUserData",
    "/parley.storage.v1.StorageArchiveService/EraseUserData",
    "/parley.storage.v1.StorageArchiveService/SetRetentionPolicy",
    "/parley.storage.v1.StorageArchiveService/ListRetentionPolicies",
    "/parley.storage.v1.StorageArchiveService/RotateKeyEncryptionKey",
    "/parley.storage.v1.StorageArchiveService/GetSchemaVersions",
    "/parley.storage.v1.StorageArchiveService/GetAuditChainState",
    "/parley.patch.v1.PatchService/PublishBaseRelease",
}
# What each agent's certificate reaches alone: the platform identity's tokenless methods, or a
# joined host's agent's (rbac.NODE_AGENT_METHODS) and its step reports.
REACHED = {
    PLATFORM_USER: PLATFORM_METHODS | SERVICE_CHECKED_FOR_THE_PLATFORM,
    NODE_AGENT: NODE_AGENT_METHODS | AGENT_REPORTS,
}


def path(service: ServiceDescriptor, method: MethodDescriptor) -> str:
    return f"/{service.full_name}/{method.name}"


def joined_hosts_pki(stack: Stack, tmp_path: Path) -> Pki:
    """A joined host's certificates as `parley host add` issues them: its agent's, no platform's."""
    return issue_into(stack.pki, [NODE_AGENT], tmp_path / "host-pki")


async def answer(stack: Stack, pki: Pki, service: ServiceDescriptor, method: MethodDescriptor) -> grpc.StatusCode:
    """The status an empty request gets from the folder's own certificate, without a token."""
    served_by = SERVED_BY[service]
    channel = secure_channel(
        pki, identity=tooling_identity(pki.directory), address=f"127.0.0.1:{stack.ports[served_by]}", peer=served_by
    )
    stack.channels.append(channel)
    request = NAMED_REQUESTS.get(path(service, method)) or message_factory.GetMessageClass(method.input_type)()
    serialize, deserialize = (
        type(request).SerializeToString,
        message_factory.GetMessageClass(method.output_type).FromString,
    )
    try:
        if method.server_streaming:
            stream = channel.unary_stream(path(service, method), serialize, deserialize)(request, timeout=STREAM_WAIT_S)
            try:
                async for _ in stream:
                    break
            finally:
                stream.cancel()
        else:
            await channel.unary_unary(path(service, method), serialize, deserialize)(request, timeout=TIMEOUT_S)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("identity", [PLATFORM_USER, NODE_AGENT])
async def test_an_agents_certificate_alone_reaches_its_tokenless_methods_and_nothing_else(
    identity: str, stack: Stack, tmp_path: Path
) -> None:
    pki = stack.pki if identity == PLATFORM_USER else joined_hosts_pki(stack, tmp_path)
    assert tooling_identity(pki.directory) == identity
    public = {m for m, needed in METHOD_PERMISSIONS.items() if needed is PUBLIC}
    let_in: set[str] = set()
    for service in SERVED_BY:
        for method in service.methods:
            if path(service, method) in public:
                continue
            if await answer(stack, pki, service, method) not in REFUSED:
                let_in.add(path(service, method))
    assert sorted(let_in - REACHED[identity]) == [], "newly reached without a token: say so in docs/security.md"
    assert sorted(REACHED[identity] - let_in) == [], "no longer reached without a token: update this list and the docs"


async def test_a_joined_hosts_agent_makes_its_probers_account_and_no_other(stack: Stack, tmp_path: Path) -> None:
    pki = joined_hosts_pki(stack, tmp_path)
    auth = auth_pb2_grpc.AuthServiceStub(
        secure_channel(pki, identity=NODE_AGENT, address=f"127.0.0.1:{stack.ports['auth']}", peer="auth")
    )
    password = "a long prober password 9f3c"
    prober = prober_username("host-x")
    refused_ones = (
        ("mallory", "member"),
        (prober, "admin"),
        (prober, "owner"),
        # Only a host's prober's name: none a person could read as a message ("...-it-support").
        ("canary-prober-it-support", "member"),
        ("canary-prober", "member"),
    )
    for username, role in refused_ones:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await auth.CreateUser(
                auth_pb2.CreateUserRequest(username=username, password=password, role=role), timeout=TIMEOUT_S
            )
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED, (username, role)
        assert "only its roll-out prober's account" in (refused.value.details() or "")

    made = await auth.CreateUser(
        auth_pb2.CreateUserRequest(username=prober, password=password, role="member"), timeout=TIMEOUT_S
    )
    assert made.role == "member"
    ctx = stack.apps["auth"].ctx
    assert ctx is not None
    registered = decode(
        (await ctx.bus.js.get_last_msg("AUTH", username_subject(username_key(made.username)))).data or b""
    )
    assert registered.actor == str(Actor.service(NODE_AGENT))  # its own name on the record, not the platform's
    assert is_synthetic_account(username=made.username, registered_by=registered.actor)

    # The agent's own prober, through the agent's code: made, logged in, a message sent and read back.
    prober = Prober(
        pki=pki,
        environment={PEER_ADDRESS_ENV[s]: f"127.0.0.1:{stack.ports[s]}" for s in ("auth", "messaging")},
        state_file=tmp_path / "probe.json",
        host="host-b",
    )
    assert await prober.transaction("messaging", f"127.0.0.1:{stack.ports['messaging']}")
    assert json.loads((tmp_path / "probe.json").read_text())["username"] == prober_username("host-b")


@pytest_asyncio.fixture
async def two_probers_stack(
    nats_server: NatsTestServer, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Stack]:
    """The platform with room for two prober accounts a node agent makes."""
    monkeypatch.setenv("PARLEY_AUTH_NODE_AGENT_PROBERS_MAX", "2")
    async with running_stack(nats_server, pki, tmp_path, registration="admin") as started:
        yield started


async def test_a_joined_hosts_agent_makes_a_bounded_number_of_probers(two_probers_stack: Stack, tmp_path: Path) -> None:
    """A stolen node-agent certificate mints no members without end: one prober per joined host is
    what agents need, so past PARLEY_AUTH_NODE_AGENT_PROBERS_MAX prober accounts it makes none
    (RESOURCE_EXHAUSTED, also for calls at once), and a prober's name made already is ALREADY_EXISTS.
    The platform identity (the first host's agent, the operator) is not bounded by it."""
    stack = two_probers_stack
    pki = joined_hosts_pki(stack, tmp_path)
    address = f"127.0.0.1:{stack.ports['auth']}"
    agent = auth_pb2_grpc.AuthServiceStub(secure_channel(pki, identity=NODE_AGENT, address=address, peer="auth"))
    password = "a long prober password 9f3c"

    async def make(stub: auth_pb2_grpc.AuthServiceAsyncStub, name: str) -> tuple[grpc.StatusCode, str]:
        try:
            await stub.CreateUser(auth_pb2.CreateUserRequest(username=name, password=password), timeout=TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details() or ""
        return grpc.StatusCode.OK, ""

    names = [prober_username(f"host-{n}") for n in range(5)]
    answers = await asyncio.gather(*(make(agent, name) for name in names))
    codes = [code for code, _ in answers]
    assert sorted(codes, key=str) == sorted(
        [grpc.StatusCode.OK] * 2 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3, key=str
    )
    assert all("PARLEY_AUTH_NODE_AGENT_PROBERS_MAX=2" in why for code, why in answers if code is not grpc.StatusCode.OK)
    made = next(name for name, code in zip(names, codes, strict=True) if code is grpc.StatusCode.OK)
    assert (await make(agent, made))[0] is grpc.StatusCode.ALREADY_EXISTS
    platform = auth_pb2_grpc.AuthServiceStub(stack.internal("auth", identity=PLATFORM_USER))
    assert (await make(platform, prober_username("first-host")))[0] is grpc.StatusCode.OK
