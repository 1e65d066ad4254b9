"""The registry as a running service: real nats-server, real serve(), real gRPC over mutual TLS.

Tokens are real EdDSA JWTs checked by the registry's own TokenVerifier; the test plays auth by
publishing the signing key on the AUTH stream. Instances are simulated by publishing their
heartbeats on the real subjects (the node agent test runs real ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import grpc
import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nats.aio.client import Client
from parley.auth.v1.events_pb2 import SigningKeyPublished
from parley.fleet.v1 import fleet_pb2, fleet_pb2_grpc
from parley.patch.v1 import events_pb2, patch_pb2, patch_pb2_grpc
from securesystemslib.signer import CryptoSigner

from parley_cli.publishing import publish_release, sign_prepared
from parley_core.bus import EventBus
from parley_core.config import REGISTRY_FOLDER
from parley_core.envelope import NewEvent, decode, open_payload
from parley_core.grpc_channel import secure_channel
from parley_core.net import free_port
from parley_core.pki import Pki, issue_into
from parley_core.tokens import AUDIENCE, ISSUER
from parley_core.topology import (
    NODE_AGENT,
    STREAMS_BY_NAME,
    VULNERABILITY_ALERTS_FILTER,
    heartbeat_subject,
    rollout_subject,
    signing_key_subject,
)
from parley_patch_registry import codec
from parley_patch_registry.rollout_events import RolloutApproved
from parley_patch_registry.service import PatchRegistryApp
from parley_patch_registry.settings import RegistrySettings
from parley_testing.nats import NatsTestServer
from parley_testing.osv import messaging_osv
from parley_testing.planning import delegated_publisher
from parley_testing.stack import served_settings, start_serving
from parley_testing.waiting import eventually, until

if TYPE_CHECKING:
    from parley_agent import NodeAgent  # imported by the tests that run one (TUF is slow to import)

pytestmark = pytest.mark.asyncio

TIMEOUT_S = 30.0
# The shared OSV test data: $PARLEY_OSV_DIR, else shared/ beside the clone (as CI has it).
_REPO = Path(__file__).resolve().parents[3]
OSV_DIR = next(
    (
        p
        for p in (Path(os.environ.get("PARLEY_OSV_DIR") or "/nonexistent"), _REPO.parent / "shared" / "data" / "osv")
        if p.is_dir()
    ),
    Path("/work/shared/data/osv"),
)
T = TypeVar("T")
# A roll-out's history when its canary fails the gate: each event once.
CANARY_ROLLED_BACK = (
    "RolloutPlanned",
    "RolloutApproved",
    "StepStarted",
    "InstanceStarted",
    "GateEvaluated",
    "RollbackStarted",
    "RolloutRolledBack",
)


@dataclass
class Registry:
    stub: patch_pb2_grpc.PatchServiceAsyncStub
    fleet: fleet_pb2_grpc.FleetServiceAsyncStub
    signing_key: Ed25519PrivateKey
    key_id: str
    heartbeats: Client
    platform: Client
    pki: Pki
    address: str = ""
    data_dir: Path = Path()
    publisher: CryptoSigner | None = None
    start: Callable[[], Awaitable[None]] = field(default=lambda: asyncio.sleep(0))
    stop: Callable[[], Awaitable[None]] = field(default=lambda: asyncio.sleep(0))
    # A second registry instance on the same NATS, with a data folder of its own (its TUF repository
    # there too, or with `shared_repository` the first one's, as a joined host's): its stub and its stop.
    start_another: Callable[
        ..., Awaitable[tuple[patch_pb2_grpc.PatchServiceAsyncStub, Callable[[], Awaitable[None]]]]
    ] = field(default=lambda: asyncio.sleep(0))  # type: ignore[assignment]
    # The last other instance started: its fleet view and its address.
    another_fleet: fleet_pb2_grpc.FleetServiceAsyncStub | None = None
    another_address: str = ""

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def token(self, user: str, role: str) -> tuple[tuple[str, str]]:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": user,
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": now + 600,
            "role": role,
            "name": user,
        }
        token = jwt.encode(claims, self.signing_key, algorithm="EdDSA", headers={"kid": self.key_id})
        return (("authorization", f"Bearer {token}"),)

    async def beat(
        self,
        instance: str,
        version: str,
        *,
        health: str = "SERVING",
        packages: dict[str, str] | None = None,
        requests: int = 0,
        errors: int = 0,
    ) -> None:
        beat = fleet_pb2.InstanceHeartbeat(
            service="messaging",
            version=version,
            instance_id=instance,
            host="host-1",
            health=health,
            distributions=[
                fleet_pb2.Distribution(name=n, version=v)
                for n, v in {"parley-messaging": version, **(packages or {})}.items()
            ],
            requests_total=requests,
            errors_total=errors,
            p99_latency_ms=10.0,
        )
        await self.heartbeats.publish(heartbeat_subject("messaging", instance), beat.SerializeToString())
        await self.heartbeats.flush()


@pytest_asyncio.fixture
async def registry(nats_server: NatsTestServer, pki: Pki, tmp_path: Path) -> AsyncIterator[Registry]:
    auth = await nats_server.connect("auth")
    auth_bus = EventBus(auth, service="auth", producer="auth@test")
    await auth_bus.ensure_streams([STREAMS_BY_NAME["AUTH"], STREAMS_BY_NAME["SEC"]])
    signing_key = Ed25519PrivateKey.generate()
    key_id = "k1"
    await auth_bus.append(
        signing_key_subject(key_id),
        NewEvent(
            aggregate_type="key",
            aggregate_id=key_id,
            actor="auth",
            payload=SigningKeyPublished(
                key_id=key_id,
                algorithm="EdDSA",
                public_key=signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
            ),
        ),
        aggregate_version=1,
        expected_last_subject_seq=None,
    )
    settings = served_settings(
        nats_server,
        pki,
        tmp_path,
        "patch-registry",
        heartbeat_seconds=5.0,  # simulated instances stay live for 15 s after a beat
        grace_seconds=5,
    )
    data_dir = settings.data_dir
    registry_settings = RegistrySettings(
        gate_window_seconds=1.0, gate_timeout_seconds=5.0, deadline_high_hours=1 / 3600, root_keys=3, root_threshold=2
    )
    running = Registry(
        stub=None,  # type: ignore[arg-type]
        fleet=None,  # type: ignore[arg-type]
        signing_key=signing_key,
        key_id=key_id,
        heartbeats=await nats_server.connect("messaging"),
        platform=await nats_server.connect("platform"),
        pki=pki,
        data_dir=data_dir,
    )

    async def launch(
        folder: Path, own_settings: RegistrySettings = registry_settings
    ) -> tuple[str, grpc.aio.Channel, Callable[[], Awaitable[None]]]:
        """One registry instance on the data folder `folder`: its address, a channel to it, its stop."""
        served = await start_serving(
            PatchRegistryApp(own_settings),
            service="patch-registry",
            settings=settings.model_copy(update={"data_dir": folder}),
        )
        address = f"127.0.0.1:{served.port}"
        channel = secure_channel(pki, identity="platform", address=address, peer="patch-registry")

        async def stop_it() -> None:
            served.stop.set()
            await channel.close()
            await asyncio.wait_for(served.task, TIMEOUT_S)

        return address, channel, stop_it

    async def start() -> None:
        running.address, channel, running.stop = await launch(data_dir)
        running.stub = patch_pb2_grpc.PatchServiceStub(channel)
        running.fleet = fleet_pb2_grpc.FleetServiceStub(channel)

    async def start_another(
        *, shared_repository: bool = False
    ) -> tuple[patch_pb2_grpc.PatchServiceAsyncStub, Callable[[], Awaitable[None]]]:
        folder = tmp_path / f"data-{uuid.uuid4().hex[:6]}"
        folder.mkdir()
        (folder / "pki").symlink_to(pki.directory, target_is_directory=True)
        shared = registry_settings.model_copy(update={"folder": data_dir / REGISTRY_FOLDER})
        running.another_address, channel, stop_it = await launch(
            folder, shared if shared_repository else registry_settings
        )
        running.another_fleet = fleet_pb2_grpc.FleetServiceStub(channel)
        return patch_pb2_grpc.PatchServiceStub(channel), stop_it

    running.start = start
    running.start_another = start_another
    await start()
    try:
        yield running
    finally:
        with contextlib.suppress(Exception):
            await running.stop()


async def publisher_key(registry: Registry) -> CryptoSigner:
    """messaging's publisher key, delegated on first use (the registry keeps only its public half)."""
    if registry.publisher is None:
        registry.publisher = await delegated_publisher(
            registry.stub, "messaging", metadata=registry.token("olga", "operator"), timeout=TIMEOUT_S
        )
    return registry.publisher


async def publish(
    registry: Registry, version: str, user: str = "dave", signer: CryptoSigner | None = None
) -> events_pb2.ReleasePublished:
    return await publish_release(
        registry.stub,
        signer=signer or await publisher_key(registry),
        service="messaging",
        version=version,
        wheel_name=f"parley_messaging-{version}-py3-none-any.whl",
        wheel=f"wheel {version}".encode(),
        fixes=["PYSEC-2023-192"],
        metadata=registry.token(user, "operator"),
        timeout=TIMEOUT_S,
    )


async def test_publishing_needs_an_operator_token(registry: Registry) -> None:
    request = patch_pb2.PublishReleaseRequest(
        service="messaging", version="0.2.0", wheel_name="parley_messaging-0.2.0-py3-none-any.whl", wheel=b"x"
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await registry.stub.PublishRelease(request, timeout=TIMEOUT_S)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await registry.stub.PublishRelease(request, metadata=registry.token("eve", "member"), timeout=TIMEOUT_S)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    release = await publish(registry, "0.2.0")
    assert release.target_path == "messaging/parley_messaging-0.2.0-py3-none-any.whl"
    assert release.published_by == "dave"  # the answer is the release's ReleasePublished record
    listed = await registry.stub.ListReleases(patch_pb2.ListReleasesRequest(service="messaging"), timeout=TIMEOUT_S)
    assert [(r.version, r.published_by) for r in listed.releases] == [("0.2.0", "dave")]
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await publish(registry, "0.2.0")
    assert again.value.code() == grpc.StatusCode.ALREADY_EXISTS
    await publish(registry, "0.3.0")
    with pytest.raises(grpc.aio.AioRpcError) as older:
        await publish(registry, "0.2.5")
    assert older.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "messaging 0.2.5 is not newer than the newest published release 0.3.0" in (older.value.details() or "")
    listed = await registry.stub.ListReleases(patch_pb2.ListReleasesRequest(service="messaging"), timeout=TIMEOUT_S)
    assert [r.version for r in listed.releases] == ["0.2.0", "0.3.0"]


async def test_registry_holds_no_publisher_key_and_refuses_a_release_signed_by_another(
    registry: Registry, tmp_path: Path
) -> None:
    operator = registry.token("dave", "operator")
    prepare = patch_pb2.PrepareReleaseRequest(
        service="messaging",
        version="0.2.0",
        wheel_name="parley_messaging-0.2.0-py3-none-any.whl",
        sha256=hashlib.sha256(b"wheel 0.2.0").hexdigest(),
        length=len(b"wheel 0.2.0"),
    )
    with pytest.raises(grpc.aio.AioRpcError) as no_key:
        await registry.stub.PrepareRelease(prepare, metadata=operator, timeout=TIMEOUT_S)
    assert no_key.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "parley patch key create messaging" in (no_key.value.details() or "")

    key = await publisher_key(registry)
    keys_dir = registry.data_dir / "patch-registry" / "keys"
    held = {p.name for p in keys_dir.rglob("*.pem")}
    assert not any(name.startswith("service-") for name in held), held  # only the registry's own roles
    prepared = await registry.stub.PrepareRelease(prepare, metadata=operator, timeout=TIMEOUT_S)
    assert prepared.keyids == [key.public_key.keyid]

    def publish_signed(signed: bytes, wheel: bytes) -> Awaitable[events_pb2.ReleasePublished]:
        return registry.stub.PublishRelease(
            patch_pb2.PublishReleaseRequest(
                service="messaging",
                version="0.2.0",
                wheel_name=prepare.wheel_name,
                wheel=wheel,
                signed_metadata=signed,
            ),
            metadata=operator,
            timeout=TIMEOUT_S,
        )

    def signed_by(signer: CryptoSigner) -> bytes:
        return sign_prepared(
            prepared.metadata,
            signer=signer,
            service="messaging",
            version="0.2.0",
            wheel_name=prepare.wheel_name,
            wheel=b"wheel 0.2.0",
        )

    forged = signed_by(CryptoSigner.generate_ed25519())
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await publish_signed(forged, b"wheel 0.2.0")
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not delegated to sign messaging releases" in (refused.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as unsigned:
        await publish_signed(b"", b"wheel 0.2.0")
    assert unsigned.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    genuine = signed_by(key)
    with pytest.raises(grpc.aio.AioRpcError) as swapped:
        await publish_signed(genuine, b"wheel 0.2.X")  # signed metadata, other bytes uploaded
    assert swapped.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not the one the signed metadata names" in (swapped.value.details() or "")

    listed = await registry.stub.ListReleases(patch_pb2.ListReleasesRequest(service="messaging"), timeout=TIMEOUT_S)
    assert not listed.releases  # nothing half-written
    release = await publish_signed(genuine, b"wheel 0.2.0")
    assert release.version == "0.2.0"


@pytest.mark.skipif(not OSV_DIR.is_dir(), reason=f"OSV test data not found at {OSV_DIR}")
async def test_advisories_against_the_fleet_and_an_overdue_security_event(registry: Registry) -> None:
    records = [p.read_text() for p in sorted(OSV_DIR.glob("*.json"))]
    operator = registry.token("alice", "operator")
    result = await registry.stub.ImportAdvisories(
        patch_pb2.ImportAdvisoriesRequest(osv_json=records), metadata=operator, timeout=TIMEOUT_S
    )
    assert (result.imported, result.withdrawn) == (30, 1)
    again = await registry.stub.ImportAdvisories(
        patch_pb2.ImportAdvisoriesRequest(osv_json=records), metadata=operator, timeout=TIMEOUT_S
    )
    assert (again.imported, again.unchanged) == (0, 30)

    overdue_events: asyncio.Queue[events_pb2.VulnerabilityOverdue] = asyncio.Queue()

    async def on_security_event(msg: object) -> None:
        payload = open_payload(decode(msg.data))  # type: ignore[attr-defined]
        assert isinstance(payload, events_pb2.VulnerabilityOverdue)
        await overdue_events.put(payload)

    # a SIEM follows the alerts through a JetStream consumer on PATCH: with every service in a NATS
    # account of its own, a plain subscription sees no other account's publishes
    await registry.platform.jetstream().subscribe(
        VULNERABILITY_ALERTS_FILTER, stream="PATCH", cb=on_security_event, ordered_consumer=True
    )
    alive = asyncio.Event()

    async def keep_beating() -> None:
        """m-1 reports like a live instance: a finding lasts only while its instance is live."""
        while not alive.is_set():
            await registry.beat("m-1", "0.1.0", packages={"urllib3": "2.0.5", "pyyaml": "6.0.1"})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(alive.wait(), 0.25)

    beating = asyncio.create_task(keep_beating())

    async def findings() -> list[patch_pb2.Finding] | None:
        response = await registry.stub.ListFindings(patch_pb2.ListFindingsRequest(), timeout=TIMEOUT_S)
        return list(response.findings) or None

    found = await eventually(findings, "findings for m-1")
    assert {(f.advisory_id, f.priority) for f in found} == {("PYSEC-2023-192", "high"), ("PYSEC-2023-212", "medium")}
    # the high one has a one-second deadline in this test: it goes overdue and raises a security event
    event = await asyncio.wait_for(overdue_events.get(), TIMEOUT_S)
    assert (event.advisory_id, event.instance_id, event.package) == ("PYSEC-2023-192", "m-1", "urllib3")

    async def overdue() -> bool | None:
        return any(f.overdue for f in await findings() or []) or None

    assert await eventually(overdue, "finding shown as overdue")
    alive.set()
    await beating


async def test_rollout_with_approval_and_automatic_rollback_of_a_failing_canary(registry: Registry) -> None:
    await publish(registry, "0.2.0", user="dave")
    alice, bob = registry.token("alice", "operator"), registry.token("bob", "operator")
    await registry.beat("m-1", "0.1.0")
    await registry.beat("m-2", "0.1.0")

    async def both_reported() -> bool | None:
        response = await registry.fleet.ListInstances(fleet_pb2.ListInstancesRequest(), timeout=TIMEOUT_S)
        return {"m-1", "m-2"} <= {i.last_heartbeat.instance_id for i in response.instances} or None

    await eventually(both_reported, "both instances in the fleet view")
    rollout = await registry.stub.PlanRollout(
        patch_pb2.PlanRolloutRequest(service="messaging", to_version="0.2.0"), metadata=alice, timeout=TIMEOUT_S
    )
    assert (rollout.state, rollout.from_version, list(rollout.old_instances)) == ("planned", "0.1.0", ["m-1", "m-2"])
    assert rollout.release_published_by == "dave"  # the console disables Approve for them too
    command = patch_pb2.RolloutCommand(rollout_id=rollout.rollout_id)
    for who, expected in (
        (alice, "planned it"),
        (registry.token("dave", "admin"), "published the release"),
        (registry.token("eve", "member"), "patch-approve"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await registry.stub.ApproveRollout(command, metadata=who, timeout=TIMEOUT_S)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert expected in (refused.value.details() or "")
    approved = await registry.stub.ApproveRollout(command, metadata=bob, timeout=TIMEOUT_S)
    assert (approved.state, approved.approved_by) == ("approved", "bob")

    get = patch_pb2.GetRolloutRequest(rollout_id=rollout.rollout_id)

    async def in_canary() -> patch_pb2.Rollout | None:
        current = await registry.stub.GetRollout(get, timeout=TIMEOUT_S)
        return current if current.state == "canary" else None

    canary = await eventually(in_canary, "the canary step")
    assert len(canary.steps) == 1
    await registry.stub.ReportInstanceStarted(
        patch_pb2.ReportInstanceRequest(rollout_id=rollout.rollout_id, instance_id="n-1", version="0.2.0"),
        timeout=TIMEOUT_S,
    )
    # the canary reports, but half its calls fail
    await registry.beat("n-1", "0.2.0", requests=0, errors=0)
    await registry.beat("n-1", "0.2.0", requests=100, errors=50)

    async def rolling_back() -> patch_pb2.Rollout | None:
        await registry.beat("n-1", "0.2.0", requests=100, errors=50)
        current = await registry.stub.GetRollout(get, timeout=TIMEOUT_S)
        return current if current.state == "rolling_back" else None

    failed = await eventually(rolling_back, "automatic rollback")
    assert "canary failed its gate" in failed.rollback_reason
    assert "error rate 50.0%" in failed.rollback_reason
    assert failed.steps[0].gate == "failed"
    assert not failed.steps[0].drained  # the old instance was never stopped
    done = await registry.stub.ReportRolledBack(get, timeout=TIMEOUT_S)
    assert done.state == "rolled_back"
    assert [a.event for a in done.audit] == list(CANARY_ROLLED_BACK)
    assert [a.actor for a in done.audit][:2] == ["alice", "bob"]
    verdict = next(a for a in done.audit if a.event == "GateEvaluated")
    assert "canary 100 calls, 50 errors" in verdict.detail, verdict.detail


async def plan_with_one_instance(registry: Registry) -> patch_pb2.Rollout:
    """alice plans messaging 0.2.0 (published already) over one instance, m-1, running 0.1.0."""
    await registry.beat("m-1", "0.1.0")

    async def reported() -> bool | None:
        response = await registry.fleet.ListInstances(fleet_pb2.ListInstancesRequest(), timeout=TIMEOUT_S)
        return any(i.last_heartbeat.instance_id == "m-1" for i in response.instances) or None

    await eventually(reported, "m-1 in the fleet view")
    return await registry.stub.PlanRollout(
        patch_pb2.PlanRolloutRequest(service="messaging", to_version="0.2.0"),
        metadata=registry.token("alice", "operator"),
        timeout=TIMEOUT_S,
    )


async def test_state_survives_a_restart_and_agent_reports_need_the_platform_identity(registry: Registry) -> None:
    release = await publish(registry, "0.2.0")
    rollout = await plan_with_one_instance(registry)
    gateway = secure_channel(registry.pki, identity="gateway", address=registry.address, peer="patch-registry")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await patch_pb2_grpc.PatchServiceStub(gateway).ReportRolledBack(
            patch_pb2.GetRolloutRequest(rollout_id=rollout.rollout_id), timeout=TIMEOUT_S
        )
    await gateway.close()
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.details() == (
        "peer ['gateway'] may not call /parley.patch.v1.PatchService/ReportRolledBack"
        " (its callers: platform, node-agent)"
    )

    await registry.restart()

    again = await registry.stub.GetRollout(
        patch_pb2.GetRolloutRequest(rollout_id=rollout.rollout_id), timeout=TIMEOUT_S
    )
    assert (again.state, again.planned_by, list(again.old_instances)) == ("planned", "alice", ["m-1"])
    # What agents install: the bytes ReleasePublished recorded, not whatever the repository says later.
    assert again.target_sha256 == rollout.target_sha256 == release.sha256
    releases = await registry.stub.ListReleases(patch_pb2.ListReleasesRequest(), timeout=TIMEOUT_S)
    assert [r.version for r in releases.releases] == ["0.2.0"]
    # the release publisher is remembered from the events: dave still may not approve
    with pytest.raises(grpc.aio.AioRpcError) as own:
        await registry.stub.ApproveRollout(
            patch_pb2.RolloutCommand(rollout_id=rollout.rollout_id),
            metadata=registry.token("dave", "admin"),
            timeout=TIMEOUT_S,
        )
    assert "published the release" in (own.value.details() or "")


async def test_a_node_agents_start_reports_neither_replace_the_gated_instance_nor_grow_the_history(
    registry: Registry, tmp_path: Path
) -> None:
    """A joined host's node-agent certificate reports steps for any roll-out (documented), but a step
    starts one new instance: the same report again is a retry that records nothing, another
    instance is FAILED_PRECONDITION (it would be the one gated), and names longer than an agent's
    are INVALID_ARGUMENT, so reports cannot grow a roll-out's history (which every GetRollout and
    ListRollouts answer carries) without end."""
    await publish(registry, "0.2.0")
    rollout = await plan_with_one_instance(registry)
    command = patch_pb2.RolloutCommand(rollout_id=rollout.rollout_id)
    await registry.stub.ApproveRollout(command, metadata=registry.token("bob", "operator"), timeout=TIMEOUT_S)
    get = patch_pb2.GetRolloutRequest(rollout_id=rollout.rollout_id)

    async def in_canary() -> patch_pb2.Rollout | None:
        current = await registry.stub.GetRollout(get, timeout=TIMEOUT_S)
        return current if current.state == "canary" else None

    await eventually(in_canary, "the canary step")
    host_pki = issue_into(registry.pki, [NODE_AGENT], tmp_path / "joined-host-pki")
    channel = secure_channel(host_pki, identity=NODE_AGENT, address=registry.address, peer="patch-registry")
    agent = patch_pb2_grpc.PatchServiceStub(channel)
    try:

        async def report(instance_id: str, host: str = "host-b") -> grpc.StatusCode:
            request = patch_pb2.ReportInstanceRequest(
                rollout_id=rollout.rollout_id, instance_id=instance_id, version="0.2.0", host=host
            )
            try:
                await agent.ReportInstanceStarted(request, timeout=TIMEOUT_S)
            except grpc.aio.AioRpcError as error:
                return error.code()
            return grpc.StatusCode.OK

        assert await report("n-1") is grpc.StatusCode.OK
        assert await report("n-1") is grpc.StatusCode.OK  # a retry
        assert await report("n-forged") is grpc.StatusCode.FAILED_PRECONDITION
        assert await report("n" * 10_000) is grpc.StatusCode.INVALID_ARGUMENT
        assert await report("n-1", host="h" * 10_000) is grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await channel.close()
    current = await registry.stub.GetRollout(get, timeout=TIMEOUT_S)
    assert current.steps[0].new_instance == "n-1"
    assert [a.event for a in current.audit].count("InstanceStarted") == 1


async def test_the_tuf_port_shows_anyone_the_releases_that_listreleases_keeps_to_fleet_read(
    registry: Registry,
) -> None:
    """Red team, from outside: ListReleases needs fleet.read (the gateway's certificate alone is
    UNAUTHENTICATED), but the TUF repository is served over plain HTTP to whoever reaches its port,
    as TUF clients fetch it: its metadata names every release, its wheel and the advisories it
    fixes, and a folder's listing names the files. docs/security.md says so ("The registry's TUF
    server"); only the network keeps this port to the platform's hosts."""
    await publish(registry, "0.2.0")
    gateway = secure_channel(registry.pki, identity="gateway", address=registry.address, peer="patch-registry")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await patch_pb2_grpc.PatchServiceStub(gateway).ListReleases(patch_pb2.ListReleasesRequest(), timeout=TIMEOUT_S)
    await gateway.close()
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    where = await registry.stub.TufRepository(patch_pb2.TufRepositoryRequest(), timeout=TIMEOUT_S)

    def fetch(url: str) -> str:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as answer:  # no certificate, no token
            return str(answer.read().decode())

    listing = await asyncio.to_thread(fetch, where.targets_url + "messaging/")
    assert "parley_messaging-0.2.0-py3-none-any.whl" in listing
    timestamp = json.loads(await asyncio.to_thread(fetch, where.metadata_url + "timestamp.json"))
    snapshot_version = timestamp["signed"]["meta"]["snapshot.json"]["version"]
    snapshot = json.loads(await asyncio.to_thread(fetch, f"{where.metadata_url}{snapshot_version}.snapshot.json"))
    customs = []
    for name, meta in snapshot["signed"]["meta"].items():  # targets.json and each service's delegated role
        role = json.loads(await asyncio.to_thread(fetch, f"{where.metadata_url}{meta['version']}.{name}"))
        customs += [t["custom"] for t in role["signed"]["targets"].values()]
    assert [(c["service"], c["version"], c["fixes"]) for c in customs] == [("messaging", "0.2.0", ["PYSEC-2023-192"])]


async def test_an_approval_by_the_planner_appended_straight_to_the_stream_drives_nothing(
    registry: Registry, nats_server: NatsTestServer
) -> None:
    """Red-team F3: patch-registry's NATS credential appends RolloutApproved(actor=planner) past
    ApproveRollout's four-eyes check; the registry replaying it, live and after a restart, ignores it."""
    await publish(registry, "0.2.0")
    rollout = await plan_with_one_instance(registry)
    insider = EventBus(await nats_server.connect("patch-registry"), service="patch-registry", producer="insider@0")
    forged = RolloutApproved(rollout_id=rollout.rollout_id, at=time.time(), actor="alice")
    appended = await insider.append(
        rollout_subject(rollout.rollout_id),
        NewEvent(
            aggregate_type="rollout", aggregate_id=rollout.rollout_id, payload=codec.to_proto(forged), actor="alice"
        ),
        aggregate_version=2,
        expected_last_subject_seq=None,
    )
    get = patch_pb2.GetRolloutRequest(rollout_id=rollout.rollout_id)

    async def forged_seen() -> patch_pb2.Rollout | None:
        current = await registry.stub.GetRollout(get, timeout=TIMEOUT_S)
        return current if current.audit[-1].event == "RolloutApproved" else None

    current = await eventually(forged_seen, f"the forged approval (seq {appended.stream_seq}) applied live")
    assert (current.state, current.approved_by) == ("planned", "")
    await registry.restart()
    current = await eventually(forged_seen, "the forged approval replayed from the stream's start")
    assert (current.state, current.approved_by) == ("planned", "")
    approved = await registry.stub.ApproveRollout(
        patch_pb2.RolloutCommand(rollout_id=rollout.rollout_id),
        metadata=registry.token("bob", "operator"),
        timeout=TIMEOUT_S,
    )
    assert (approved.state, approved.approved_by) == ("approved", "bob")  # a real second pair of eyes still can


async def test_an_instance_stopped_on_purpose_leaves_the_fleet_view(registry: Registry) -> None:
    """Its last heartbeat says STOPPED (a drain, a platform stop); one that falls silent stays, stale."""
    await registry.beat("m-1", "0.1.0")
    await registry.beat("m-2", "0.1.0")

    async def listed() -> set[str] | None:
        response = await registry.fleet.ListInstances(fleet_pb2.ListInstancesRequest(), timeout=TIMEOUT_S)
        ids = {i.last_heartbeat.instance_id for i in response.instances}
        return ids if {"m-1", "m-2"} <= ids else None

    await eventually(listed, "both instances in the fleet view")
    await registry.beat("m-1", "0.1.0", health="STOPPED")

    async def without_m1() -> set[str] | None:
        response = await registry.fleet.ListInstances(fleet_pb2.ListInstancesRequest(), timeout=TIMEOUT_S)
        ids = {i.last_heartbeat.instance_id for i in response.instances}
        return ids if "m-1" not in ids else None

    assert "m-2" in await eventually(without_m1, "the stopped instance to leave the fleet view")


async def test_a_finding_ends_fixed_with_its_time_to_patch_when_a_fixed_instance_replaces_the_vulnerable_one(
    registry: Registry,
) -> None:
    advisory = messaging_osv("TEST-MTTP-1", "0.2.0")
    await registry.stub.ImportAdvisories(
        patch_pb2.ImportAdvisoriesRequest(osv_json=[json.dumps(advisory)]),
        metadata=registry.token("alice", "operator"),
        timeout=TIMEOUT_S,
    )
    with_fixed = patch_pb2.ListFindingsRequest(include_fixed=True)
    await registry.beat("m-1", "0.1.0")

    async def open_finding() -> patch_pb2.Finding | None:
        response = await registry.stub.ListFindings(with_fixed, timeout=TIMEOUT_S)
        assert not response.fixed, "nothing is fixed while m-1 runs the vulnerable version"
        return next((f for f in response.findings if f.advisory_id == "TEST-MTTP-1"), None)

    found = await eventually(open_finding, "the finding against m-1")
    assert (found.instance_id, found.installed_version, found.fixed_at) == ("m-1", "0.1.0", 0.0)

    # A roll-out's step: m-2 at the fixed version starts, then m-1 stops.
    async def fixed() -> patch_pb2.ListFindingsResponse | None:
        response = await registry.stub.ListFindings(with_fixed, timeout=TIMEOUT_S)
        return response if response.fixed else None

    async with beating(registry, "m-2", "0.2.0"):
        await registry.beat("m-1", "0.1.0", health="STOPPED")
        # (a fix waits until the registry has heard every live instance: 15 s after its start here)
        response = await eventually(fixed, "the finding listed as fixed")
    assert not [f for f in response.findings if f.advisory_id == "TEST-MTTP-1"]
    [done] = response.fixed
    assert (done.advisory_id, done.service, done.instance_id, done.package) == (
        "TEST-MTTP-1",
        "messaging",
        "m-1",
        "parley-messaging",
    )
    assert done.detected_at == found.detected_at, "time to patch runs from the first detection"
    assert found.detected_at <= done.fixed_at <= time.time()
    # Without include_fixed the answer is the open findings only, as before.
    plain = await registry.stub.ListFindings(patch_pb2.ListFindingsRequest(), timeout=TIMEOUT_S)
    assert not plain.fixed
    # The period: a fix before `fixed_since` is left out.
    later = patch_pb2.ListFindingsRequest(include_fixed=True, fixed_since=done.fixed_at + 1)
    assert not (await registry.stub.ListFindings(later, timeout=TIMEOUT_S)).fixed
    with pytest.raises(grpc.aio.AioRpcError) as refused:  # no time at all: refused, not an internal error
        await registry.stub.ListFindings(
            patch_pb2.ListFindingsRequest(include_fixed=True, fixed_since=float("inf")), timeout=TIMEOUT_S
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    # The fix outlives the registry: it is on the PATCH stream, and the replay finds it again.
    await registry.restart()
    kept = (await registry.stub.ListFindings(with_fixed, timeout=TIMEOUT_S)).fixed
    assert [(f.advisory_id, f.instance_id, f.installed_version, f.detected_at, f.fixed_at) for f in kept] == [
        (done.advisory_id, done.instance_id, done.installed_version, done.detected_at, done.fixed_at)
    ], "the time to patch survives a restart"
    assert (kept[0].priority, kept[0].deadline, kept[0].summary) == (done.priority, done.deadline, done.summary)


# ---- findings are events on the PATCH stream: restarts, roll-outs and a second registry ----------

HIGH_VECTOR = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N"  # 7.5: high, due in a second in these tests


def messaging_advisory(advisory_id: str, fixed: str, *, vector: str = "") -> str:
    return json.dumps(messaging_osv(advisory_id, fixed, vector=vector))


async def import_advisories(registry: Registry, *records: str) -> None:
    await registry.stub.ImportAdvisories(
        patch_pb2.ImportAdvisoriesRequest(osv_json=list(records)),
        metadata=registry.token("alice", "operator"),
        timeout=TIMEOUT_S,
    )


@contextlib.asynccontextmanager
async def beating(registry: Registry, instance: str, version: str) -> AsyncIterator[None]:
    """The instance reports like a live one (a finding lasts only while its instance is live)."""
    done = asyncio.Event()

    async def keep_beating() -> None:
        while not done.is_set():
            await registry.beat(instance, version)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.25)

    task = asyncio.create_task(keep_beating())
    try:
        yield
    finally:
        done.set()
        await task


async def finding_of(
    stub: patch_pb2_grpc.PatchServiceAsyncStub, advisory_id: str, instance: str
) -> patch_pb2.Finding | None:
    response = await stub.ListFindings(patch_pb2.ListFindingsRequest(include_fixed=True), timeout=TIMEOUT_S)
    return next((f for f in response.findings if (f.advisory_id, f.instance_id) == (advisory_id, instance)), None)


async def test_a_finding_keeps_its_detection_time_and_deadline_over_a_restart_and_is_alerted_once(
    registry: Registry,
) -> None:
    alerts: list[events_pb2.VulnerabilityOverdue] = []

    async def on_alert(msg: object) -> None:
        payload = open_payload(decode(msg.data))  # type: ignore[attr-defined]
        assert isinstance(payload, events_pb2.VulnerabilityOverdue)
        alerts.append(payload)

    await registry.platform.jetstream().subscribe(
        VULNERABILITY_ALERTS_FILTER, stream="PATCH", cb=on_alert, ordered_consumer=True
    )
    await import_advisories(registry, messaging_advisory("TEST-DUR-1", "0.3.0", vector=HIGH_VECTOR))

    async def overdue_finding() -> patch_pb2.Finding | None:
        found = await finding_of(registry.stub, "TEST-DUR-1", "m-1")
        return found if found and found.overdue else None

    async def alerted(advisory_id: str) -> bool | None:
        return any(a.advisory_id == advisory_id for a in alerts) or None

    async with beating(registry, "m-1", "0.1.0"):
        before = await eventually(overdue_finding, "the finding against m-1 past its deadline")
        await eventually(lambda: alerted("TEST-DUR-1"), "the overdue alert")
        await registry.restart()

        after = await eventually(
            lambda: finding_of(registry.stub, "TEST-DUR-1", "m-1"), "the finding after the restart"
        )
        assert (after.detected_at, after.deadline) == (before.detected_at, before.deadline), (
            "a restart does not reset the detection time nor the deadline"
        )
        assert after.overdue, "an overdue finding stays overdue after a restart"
        # Another finding goes overdue after the restart: once its alert is out, a pass of the
        # overdue check has seen the first one too, and (earlier deadline first) raised nothing again.
        await import_advisories(registry, messaging_advisory("TEST-DUR-2", "0.3.0", vector=HIGH_VECTOR))
        await eventually(lambda: alerted("TEST-DUR-2"), "the second finding's overdue alert")
    assert sorted(a.advisory_id for a in alerts) == ["TEST-DUR-1", "TEST-DUR-2"], "one alert per finding"


async def test_a_roll_out_to_a_version_still_affected_keeps_the_detection_time(registry: Registry) -> None:
    await import_advisories(registry, messaging_advisory("TEST-DUR-3", "0.3.0"))
    async with beating(registry, "m-1", "0.1.0"):
        first = await eventually(lambda: finding_of(registry.stub, "TEST-DUR-3", "m-1"), "the finding against m-1")
    # A roll-out's step to 0.2.0, still affected: m-2 starts, m-1 stops.
    async with beating(registry, "m-2", "0.2.0"):
        await registry.beat("m-1", "0.1.0", health="STOPPED")
        moved = await eventually(lambda: finding_of(registry.stub, "TEST-DUR-3", "m-2"), "the finding against m-2")
        response = await registry.stub.ListFindings(
            patch_pb2.ListFindingsRequest(include_fixed=True), timeout=TIMEOUT_S
        )
    assert moved.installed_version == "0.2.0"
    assert (moved.detected_at, moved.deadline) == (first.detected_at, first.deadline), (
        "the service is still exposed: its clock runs on from the first detection"
    )
    assert not response.fixed, "a roll-out to a version still affected fixes nothing"


async def test_two_registries_record_one_detection_and_show_the_same_clock(
    registry: Registry, nats_server: NatsTestServer
) -> None:
    other, stop_other = await registry.start_another()
    try:
        await import_advisories(registry, messaging_advisory("TEST-DUR-4", "0.3.0"))
        async with beating(registry, "m-1", "0.1.0"):
            seen = [
                await eventually(lambda stub=stub: finding_of(stub, "TEST-DUR-4", "m-1"), "the finding")  # type: ignore[misc]
                for stub in (registry.stub, other)
            ]
        assert seen[0].detected_at == seen[1].detected_at
        assert seen[0].deadline == seen[1].deadline
    finally:
        await stop_other()
    # Every event of the exposure's subject: one detection, whoever saw it first.
    reader = await nats_server.connect("platform")
    try:
        detections: list[events_pb2.FindingDetected] = []
        subscription = await reader.jetstream().subscribe(
            "parley.patch.finding.TEST-DUR-4.>", stream="PATCH", ordered_consumer=True
        )
        while True:  # until the consumer says none is left
            msg = await subscription.next_msg(timeout=TIMEOUT_S)
            payload = open_payload(decode(msg.data))
            if isinstance(payload, events_pb2.FindingDetected):
                detections.append(payload)
            if msg.metadata.num_pending == 0:
                break
        assert len(detections) == 1, detections
        assert detections[0].detected_at == seen[0].detected_at
    finally:
        await reader.close()


async def one_taken_one_refused(
    *calls: Awaitable[patch_pb2.Rollout],
) -> tuple[patch_pb2.Rollout, grpc.aio.AioRpcError]:
    """The same decision sent through two registries at once: one is recorded, the other refused
    as FAILED_PRECONDITION (it read the first one's event)."""
    answers = await asyncio.gather(*calls, return_exceptions=True)
    taken = [a for a in answers if isinstance(a, patch_pb2.Rollout)]
    refused = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
    assert len(taken) == 1, answers
    assert [r.code() for r in refused] == [grpc.StatusCode.FAILED_PRECONDITION], answers
    return taken[0], refused[0]


async def test_two_registries_on_one_repository_drive_one_roll_out_without_a_repeated_step(registry: Registry) -> None:
    """A joined host's registry beside the first one (one TUF repository, in a folder both reach):
    a release published through one is there for the other, both drive the same roll-out, and a
    decision both take at once (two approvals) is recorded once, the other refused precisely."""
    other, stop_other = await registry.start_another(shared_repository=True)
    try:
        await publish(registry, "0.2.0", user="dave")
        releases = await other.ListReleases(patch_pb2.ListReleasesRequest(service="messaging"), timeout=TIMEOUT_S)
        assert "0.2.0" in {r.version for r in releases.releases}, "the other instance reads the same repository"
        await registry.beat("m-1", "0.1.0")

        async def m1_live() -> bool | None:
            # In both instances' fleet views: each follows the heartbeats on its own, and the plan
            # below goes through the other one.
            assert registry.another_fleet is not None
            for fleet in (registry.fleet, registry.another_fleet):
                response = await fleet.ListInstances(fleet_pb2.ListInstancesRequest(), timeout=TIMEOUT_S)
                if "m-1" not in {i.last_heartbeat.instance_id for i in response.instances}:
                    return None
            return True

        await eventually(m1_live, "m-1 in both instances' fleet views")
        # Planned through the other instance, from the release the first one wrote.
        rollout = await other.PlanRollout(
            patch_pb2.PlanRolloutRequest(service="messaging", to_version="0.2.0"),
            metadata=registry.token("alice", "operator"),
            timeout=TIMEOUT_S,
        )
        assert list(rollout.old_instances) == ["m-1"]
        get = patch_pb2.GetRolloutRequest(rollout_id=rollout.rollout_id)

        async def known_to_the_first() -> bool | None:
            try:
                await registry.stub.GetRollout(get, timeout=TIMEOUT_S)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                return None  # not replayed there yet
            return True

        await eventually(known_to_the_first, "the plan in the first instance")
        command = patch_pb2.RolloutCommand(rollout_id=rollout.rollout_id)
        await one_taken_one_refused(
            registry.stub.ApproveRollout(command, metadata=registry.token("bob", "operator"), timeout=TIMEOUT_S),
            other.ApproveRollout(command, metadata=registry.token("carol", "operator"), timeout=TIMEOUT_S),
        )

        async def in_canary() -> patch_pb2.Rollout | None:
            current = await other.GetRollout(get, timeout=TIMEOUT_S)
            return current if current.state == "canary" else None

        await eventually(in_canary, "the canary step")
        await other.ReportInstanceStarted(
            patch_pb2.ReportInstanceRequest(rollout_id=rollout.rollout_id, instance_id="n-1", version="0.2.0"),
            timeout=TIMEOUT_S,
        )
        await registry.beat("n-1", "0.2.0", requests=0, errors=0)

        async def rolling_back() -> patch_pb2.Rollout | None:
            await registry.beat("n-1", "0.2.0", requests=100, errors=50)
            current = await registry.stub.GetRollout(get, timeout=TIMEOUT_S)
            return current if current.state == "rolling_back" else None

        await eventually(rolling_back, "the failing canary rolled back")
        done = await registry.stub.ReportRolledBack(get, timeout=TIMEOUT_S)
    finally:
        await stop_other()
    # Both instances drove it every second: each step and verdict is in its history once.
    assert [a.event for a in done.audit] == list(CANARY_ROLLED_BACK)


async def test_two_plans_at_once_through_two_registries_record_one_roll_out(registry: Registry) -> None:
    """One unfinished roll-out per service holds across registries: each appends a plan after
    every roll-out's last event, so the later one is refused by the stream, reads the other's
    plan and refuses precisely."""
    other, stop_other = await registry.start_another(shared_repository=True)
    try:
        await publish(registry, "0.2.0", user="dave")
        await registry.beat("m-1", "0.1.0")

        async def m1_live_in_both() -> bool | None:
            for fleet in (registry.fleet, registry.another_fleet):
                assert fleet is not None
                response = await fleet.ListInstances(fleet_pb2.ListInstancesRequest(), timeout=TIMEOUT_S)
                if "m-1" not in {i.last_heartbeat.instance_id for i in response.instances}:
                    return None
            return True

        await eventually(m1_live_in_both, "m-1 in both fleet views")
        plan = patch_pb2.PlanRolloutRequest(service="messaging", to_version="0.2.0")
        planned, refused = await one_taken_one_refused(
            registry.stub.PlanRollout(plan, metadata=registry.token("alice", "operator"), timeout=TIMEOUT_S),
            other.PlanRollout(plan, metadata=registry.token("bob", "operator"), timeout=TIMEOUT_S),
        )
        assert refused.details() == f"a roll-out of messaging is already under way: {planned.rollout_id}"
        for stub in (registry.stub, other):
            listed = await stub.ListRollouts(patch_pb2.ListRolloutsRequest(), timeout=TIMEOUT_S)
            assert [r.rollout_id for r in listed.rollouts] == [planned.rollout_id]
    finally:
        await stop_other()


@contextlib.asynccontextmanager
async def following_agent(
    registry: Registry, folder: Path, addresses: list[str], said: list[str]
) -> AsyncIterator[NodeAgent]:
    """A node agent following the registries at `addresses` (its lines into `said`) until the block ends."""
    from parley_agent import NodeAgent as Agent  # the whole agent (TUF): only these tests need it

    agent = Agent(
        data_dir=folder,
        pki=registry.pki,
        registry_address=addresses,
        environment={},
        host="host-b",
        announce=said.append,
    )
    following = asyncio.create_task(agent.run())
    try:
        yield agent
    finally:
        await agent.stop()
        await following


async def agent_lists_rollouts(agent: NodeAgent) -> None:
    listed = await agent.registry.ListRollouts(patch_pb2.ListRolloutsRequest(), timeout=TIMEOUT_S)
    assert isinstance(listed, patch_pb2.ListRolloutsResponse)


async def test_a_node_agent_moves_to_the_next_registry_when_its_own_stops_answering(
    registry: Registry, tmp_path: Path
) -> None:
    """An agent given several registries (the first host's and a joined host's) follows the one
    that answers: nothing listens at the first address any more (its host lost)."""
    lost = f"127.0.0.1:{free_port()}"
    said: list[str] = []
    async with following_agent(registry, tmp_path / "agent", [lost, registry.address], said) as agent:
        await until(lambda: agent.registry_address == registry.address, "the agent following the other registry")
        await agent_lists_rollouts(agent)
    assert any(f"registry at {lost} not reachable (UNAVAILABLE); following the one at" in line for line in said), said


async def test_a_node_agent_given_one_registry_learns_the_others_from_their_heartbeats(
    registry: Registry, tmp_path: Path
) -> None:
    """A host that runs no registry is given the first host's alone: the fleet view names the
    other registry instances (their heartbeats), so the agent follows one when the first is lost."""
    _, stop_other = await registry.start_another(shared_repository=True)
    try:
        async with following_agent(registry, tmp_path / "agent", [registry.address], []) as agent:
            await until(
                lambda: registry.another_address in agent.registry_addresses, "the agent knowing the other registry"
            )
            await registry.stop()  # the first host lost
            await until(lambda: agent.registry_address == registry.another_address, "the agent following the other")
            await agent_lists_rollouts(agent)
    finally:
        await stop_other()
