"""min_event_schema: a roll-out to a release that cannot read the oldest stored events is refused."""

from __future__ import annotations

import grpc
import pytest
from parley.patch.v1 import patch_pb2, patch_pb2_grpc
from parley.storage.v1 import storage_pb2, storage_pb2_grpc

from parley_cli.publishing import publish_release
from parley_core.errors import FailedPrecondition
from parley_patch_registry.schemas import StoredSchemas, check_readable, streams_read_by
from parley_patch_registry.service import storage_schema_census
from parley_testing.planning import delegated_publisher, plan_once_heard
from parley_testing.stack import TIMEOUT_S, Stack, bearer
from parley_testing.waiting import eventually

POSTED = "parley.messaging.v1.MessagePosted"


def test_messaging_reads_its_own_stream_and_auth_but_not_the_security_log() -> None:
    assert {"MSG", "AUTH"} <= streams_read_by("messaging")
    assert "SEC" not in streams_read_by("messaging")


def test_a_release_that_reads_every_stored_schema_passes() -> None:
    stored = [StoredSchemas("MSG", POSTED, oldest=2, events=10), StoredSchemas("AUTH", "x.Y", oldest=3, events=1)]
    check_readable("messaging", "0.2.0", 2, stored)
    check_readable("messaging", "0.2.0", 1, [StoredSchemas("MSG", POSTED, oldest=0, events=1)])  # unset = 1


def test_older_events_in_a_stream_the_service_reads_are_refused_with_the_culprit_named() -> None:
    stored = [StoredSchemas("MSG", POSTED, oldest=1, events=42), StoredSchemas("MSG", "x.Z", oldest=2, events=1)]
    with pytest.raises(FailedPrecondition) as refused:
        check_readable("messaging", "0.3.0", 3, stored)
    message = str(refused.value)
    assert "messaging 0.3.0 reads event schema 3 and newer" in message
    assert f"the MSG stream still holds 42 {POSTED} events at schema 1" in message
    assert "(and 1 more event types)" in message
    assert "--min-event-schema 1" in message


def test_old_events_in_streams_the_service_does_not_read_do_not_block_it() -> None:
    check_readable("messaging", "0.3.0", 3, [StoredSchemas("SEC", "x.Audit", oldest=1, events=5)])


async def test_registry_refuses_to_plan_a_release_newer_than_the_archived_events(stack: Stack) -> None:
    await stack.create_user("pat", "operator")
    await stack.create_user("olga", "operator")
    publisher = bearer((await stack.login("pat")).access_token)
    planner = bearer((await stack.login("olga")).access_token)
    archive: storage_pb2_grpc.StorageArchiveServiceAsyncStub = storage_pb2_grpc.StorageArchiveServiceStub(
        stack.internal("storage", identity="patch-registry")
    )

    async def auth_events_archived() -> storage_pb2.GetSchemaVersionsResponse | None:
        response = await archive.GetSchemaVersions(storage_pb2.GetSchemaVersionsRequest(), timeout=TIMEOUT_S)
        return response if any(v.stream == "AUTH" for v in response.versions) else None

    archived = await eventually(auth_events_archived, "the accounts' AUTH events in the archive", TIMEOUT_S)
    assert all(v.oldest_schema_version == 1 and v.events > 0 for v in archived.versions)

    # The stack starts the registry before storage listens, so its census has no address yet:
    # point it at the running storage, through the same adapter the service wires.
    stack.app("patch-registry").registry.schema_census = storage_schema_census(archive)
    registry: patch_pb2_grpc.PatchServiceAsyncStub = patch_pb2_grpc.PatchServiceStub(
        stack.internal("patch-registry", identity="platform")
    )
    signer = await delegated_publisher(registry, "messaging", metadata=publisher, timeout=TIMEOUT_S)
    for version, min_schema in (("0.2.0", 2), ("0.2.1", 1)):
        await publish_release(
            registry,
            signer=signer,
            service="messaging",
            version=version,
            wheel_name=f"parley_messaging-{version}-py3-none-any.whl",
            wheel=b"not installed by this test",
            min_event_schema=min_schema,
            metadata=publisher,
            timeout=TIMEOUT_S,
        )

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await registry.PlanRollout(
            patch_pb2.PlanRolloutRequest(service="messaging", to_version="0.2.0"), metadata=planner, timeout=TIMEOUT_S
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "messaging 0.2.0 reads event schema 2 and newer" in (refused.value.details() or "")
    assert "AUTH stream still holds" in (refused.value.details() or "")
    listed = await registry.ListRollouts(patch_pb2.ListRolloutsRequest(), timeout=TIMEOUT_S)
    assert not listed.rollouts  # nothing half-written

    readable = patch_pb2.PlanRolloutRequest(service="messaging", to_version="0.2.1")
    planned = await plan_once_heard(
        registry, readable, metadata=planner, timeout=TIMEOUT_S, what="a plan of the release that reads schema 1"
    )
    assert planned.state == "planned"
