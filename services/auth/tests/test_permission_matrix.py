"""Every RPC of every service x every role: allowed, or PERMISSION_DENIED, as rbac says.

Requests are empty on purpose: an allowed call may then fail validation (INVALID_ARGUMENT,
NOT_FOUND, ...) but must never be PERMISSION_DENIED, and a denied call must be refused before
any validation. Internal services are called as the gateway calls them (mutual TLS with the
user's token), so each service's own enforcement is what is tested, not only the gateway's.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from parley.auth.v1 import auth_pb2
from parley.fleet.v1 import fleet_pb2
from parley.gateway.v1 import gateway_pb2
from parley.messaging.v1 import messaging_pb2
from parley.patch.v1 import patch_pb2
from parley.storage.v1 import storage_pb2

from parley_core.rbac import (
    METHOD_PERMISSIONS,
    MFA_PENDING_PERMISSIONS,
    ROLES,
    SERVICE_CHECKED_METHODS,
    permissions_of,
)
from parley_testing.stack import TIMEOUT_S, Stack, bearer

SERVICES: dict[str, ServiceDescriptor] = {
    "auth": auth_pb2.DESCRIPTOR.services_by_name["AuthService"],
    "messaging": messaging_pb2.DESCRIPTOR.services_by_name["MessagingService"],
    "messaging-devices": messaging_pb2.DESCRIPTOR.services_by_name["DeviceKeyService"],
    "storage": storage_pb2.DESCRIPTOR.services_by_name["StorageService"],
    "storage-archive": storage_pb2.DESCRIPTOR.services_by_name["StorageArchiveService"],
    "patch-registry": fleet_pb2.DESCRIPTOR.services_by_name["FleetService"],
    "patch": patch_pb2.DESCRIPTOR.services_by_name["PatchService"],
    "gateway": gateway_pb2.DESCRIPTOR.services_by_name["Gateway"],
}
# Ends the session it is called with, so it gets a fresh login of its own.
ENDS_SESSION = ("Logout",)


def path(service: ServiceDescriptor, method: MethodDescriptor) -> str:
    return f"/{service.full_name}/{method.name}"


def every_method() -> list[tuple[str, ServiceDescriptor, MethodDescriptor]]:
    return [(name, s, m) for name, s in SERVICES.items() for m in s.methods]


def test_every_rpc_of_every_service_is_in_the_permission_table() -> None:
    known = METHOD_PERMISSIONS.keys() | SERVICE_CHECKED_METHODS
    missing = [path(s, m) for _, s, m in every_method() if path(s, m) not in known]
    assert missing == [], f"add these RPCs to parley_core.rbac.METHOD_PERMISSIONS: {missing}"


def test_least_privilege_roles() -> None:
    assert "messages.read" not in permissions_of("operator")
    assert "patches.rollout" in permissions_of("operator")
    auditor = permissions_of("security-auditor")
    assert "audit.read" in auditor
    assert not auditor & {"users.manage", "roles.assign", "messages.send", "patches.rollout"}
    assert "channels.create" not in permissions_of("guest")
    assert permissions_of("no-such-role") == frozenset()
    # Every account may export or erase its own data, but not before its second factor.
    assert all("data.own" in permissions_of(role) for role in ROLES)
    assert "data.own" not in MFA_PENDING_PERMISSIONS


async def call(stack: Stack, service: str, descriptor: ServiceDescriptor, method: MethodDescriptor, token: str) -> Any:
    served_by = {"messaging-devices": "messaging", "patch": "patch-registry"}.get(service, service)
    channel = stack.gateway_channel() if service == "gateway" else stack.internal(served_by)
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    target = path(descriptor, method)
    if method.server_streaming:
        stream = channel.unary_stream(
            target, request_serializer=request_class.SerializeToString, response_deserializer=response_class.FromString
        )(request_class(), metadata=bearer(token), timeout=TIMEOUT_S)
        try:
            async for _ in stream:
                break
        finally:
            stream.cancel()
        return None
    unary = channel.unary_unary(
        target, request_serializer=request_class.SerializeToString, response_deserializer=response_class.FromString
    )
    return await unary(request_class(), metadata=bearer(token), timeout=TIMEOUT_S)


async def test_permission_matrix(stack: Stack) -> None:
    rows: list[str] = []
    wrong: list[str] = []
    for role in ROLES:
        await stack.create_user(f"user-{role}", role)
        token = (await stack.login(f"user-{role}")).access_token
        for service, descriptor, method in every_method():
            if path(descriptor, method) in SERVICE_CHECKED_METHODS:
                continue  # the service's own rules, tested with the service
            needed = METHOD_PERMISSIONS[path(descriptor, method)]
            allowed = needed is None or needed in permissions_of(role)
            if method.name in ENDS_SESSION:
                token = (await stack.login(f"user-{role}")).access_token
            details = ""
            try:
                await call(stack, service, descriptor, method, token)
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                code, details = exc.code(), exc.details() or ""
            if method.name in ENDS_SESSION:
                token = (await stack.login(f"user-{role}")).access_token
            denied = code == grpc.StatusCode.PERMISSION_DENIED
            rows.append(f"{role:<17}{path(descriptor, method):<55}{code.name}")
            if allowed == denied:
                wrong.append(rows[-1] + f"  (expected {'allowed' if allowed else 'PERMISSION_DENIED'})")
            elif denied and not details.endswith(f"; you are {role}"):
                wrong.append(rows[-1] + f"  (the refusal should name who holds the permission: {details!r})")
    print("\n[permission matrix]\n" + "\n".join(rows))
    assert wrong == []
