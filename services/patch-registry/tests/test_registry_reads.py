"""Who reads what the fleet runs, its releases, findings and roll-outs from the registry.

The gateway forwards these reads for its clients, so its certificate reaches the registry; the
registry itself requires a user token holding fleet.read with it (rbac.METHOD_PERMISSIONS), so a
holder of the gateway's certificate alone, or with a plain member's token, reads nothing. The
platform identity (the CLI, node agents) reads them without a token (rbac.PLATFORM_METHODS).
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from parley.patch.v1 import patch_pb2, patch_pb2_grpc

from parley_core.rbac import METHOD_PERMISSIONS, Permission
from parley_gateway.domain.routes import ROUTES, Upstream
from parley_testing.stack import TIMEOUT_S, Stack, bearer

PATCH = patch_pb2.DESCRIPTOR.services_by_name["PatchService"]
# Every registry read the gateway forwards, and TufRepository, which node agents ask.
READS = ("ListReleases", "ListFindings", "ListRollouts", "GetRollout", "TufRepository")
# Answers that say the call was let in (an empty GetRollout names no roll-out).
LET_IN = {grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT}


async def read(stack: Stack, name: str, *, identity: str, metadata: Any = ()) -> grpc.StatusCode:
    method = PATCH.methods_by_name[name]
    request = message_factory.GetMessageClass(method.input_type)()
    stub = patch_pb2_grpc.PatchServiceStub(stack.internal("patch-registry", identity=identity))
    try:
        await getattr(stub, name)(request, metadata=metadata, timeout=TIMEOUT_S)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_every_registry_read_the_gateway_forwards_needs_fleet_read_at_the_registry() -> None:
    forwarded = [n for n, r in ROUTES.items() if r.upstream is Upstream.PATCH and r.needs is None]
    assert sorted(forwarded) == sorted(set(READS) - {"TufRepository"})
    for name in READS:
        assert METHOD_PERMISSIONS[f"/{PATCH.full_name}/{name}"] is Permission.FLEET_READ, name


async def test_the_gateways_certificate_reads_nothing_without_a_token_holding_fleet_read(stack: Stack) -> None:
    await stack.create_user("mia", "member")
    member = bearer((await stack.login("mia")).access_token)
    for name in READS:
        assert await read(stack, name, identity="gateway") is grpc.StatusCode.UNAUTHENTICATED, name
        assert await read(stack, name, identity="gateway", metadata=member) is grpc.StatusCode.PERMISSION_DENIED, name


async def test_an_operator_reads_them_through_the_gateway_and_the_platform_identity_without_a_token(
    stack: Stack,
) -> None:
    await stack.create_user("olga", "operator")
    operator = bearer((await stack.login("olga")).access_token)
    gateway = stack.gateway()
    releases = await gateway.ListReleases(patch_pb2.ListReleasesRequest(), metadata=operator, timeout=TIMEOUT_S)
    findings = await gateway.ListFindings(patch_pb2.ListFindingsRequest(), metadata=operator, timeout=TIMEOUT_S)
    rollouts = await gateway.ListRollouts(patch_pb2.ListRolloutsRequest(), metadata=operator, timeout=TIMEOUT_S)
    assert (list(releases.releases), list(findings.findings), list(rollouts.rollouts)) == ([], [], [])
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await gateway.GetRollout(patch_pb2.GetRolloutRequest(rollout_id="r-0"), metadata=operator, timeout=TIMEOUT_S)
    assert unknown.value.code() is grpc.StatusCode.NOT_FOUND  # let in, then looked up
    for name in READS:
        assert await read(stack, name, identity="gateway", metadata=operator) in LET_IN, name
        assert await read(stack, name, identity="platform") in LET_IN, name
