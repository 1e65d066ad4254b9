"""Who reads which stream through the archive API, cell by cell (the matrix in docs/security.md's security
section): every identity a call comes with (a service's certificate, the operator's platform
identity, a user's token on the gateway's connection) against every archived stream, through
every call that returns events. Written out by hand here, not derived from the code under test.

Cells: "refused"; "metadata" (position, type, aggregate, actor, time; no content); "content"
(fields marked secret withheld); "secrets" (content with the writer's sealed secrets: auth only).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message
from parley.common.v1.envelope_pb2 import EventEnvelope
from parley.fleet.v1 import fleet_pb2
from parley.messaging.v1 import messaging_pb2
from parley.patch.v1 import patch_pb2, patch_pb2_grpc
from parley.patch.v1.events_pb2 import FindingDetected, VulnerabilityOverdue
from parley.storage.v1 import storage_pb2, storage_pb2_grpc
from securesystemslib.signer import CryptoSigner

from parley_cli.audit_query import _line
from parley_cli.publishing import public_pem
from parley_core.envelope import open_payload
from parley_core.pki import Pki
from parley_core.secret_fields import holds_secrets
from parley_core.topology import heartbeat_subject
from parley_testing.nats import NatsTestServer
from parley_testing.stack import TIMEOUT_S, Stack, bearer, start_stack, stop_stack
from parley_testing.waiting import eventually

STREAMS = ("AUTH", "MSG", "SEC", "PATCH", "STORE")
# Real OSV advisories: $PARLEY_OSV_DIR, or ../shared/data/osv beside the repository.
OSV_DIR = next(
    (
        p
        for p in (
            Path(os.environ.get("PARLEY_OSV_DIR") or "/nonexistent"),
            Path(__file__).resolve().parents[3].parent / "shared" / "data" / "osv",
        )
        if p.is_dir()
    ),
    Path("/work/shared/data/osv"),
)
REFUSED, METADATA, CONTENT, SECRETS = "refused", "metadata", "content", "secrets"
# reader: (certificate presented, role of the user whose token comes with the call, if any)
READERS: dict[str, tuple[str, str | None]] = {
    "auth": ("auth", None),
    "messaging": ("messaging", None),
    "patch-registry": ("patch-registry", None),
    "gateway": ("gateway", None),
    "member": ("gateway", "member"),
    "admin": ("gateway", "admin"),
    "operator (platform identity)": ("platform", None),
    "security-auditor": ("gateway", "security-auditor"),
}
C, R = CONTENT, REFUSED
# What ReadArchivedStream and GetAggregateEvents give each reader of each stream.
#                                              AUTH     MSG       SEC PATCH STORE
READS: dict[str, tuple[str, ...]] = {
    "auth": (SECRETS, R, C, R, R),
    "messaging": (C, C, R, R, R),
    "patch-registry": (C, R, R, C, R),
    "gateway": (R, R, R, R, R),
    "member": (R, R, R, R, R),
    "admin": (R, R, R, R, R),
    "operator (platform identity)": (C, C, C, C, C),
    "security-auditor": (C, METADATA, C, C, C),
}
# QueryAudit: the auditor only, with the same views.
AUDIT_QUERIES = {reader: READS[reader] if reader == "security-auditor" else (R,) * 5 for reader in READERS}


def seen(events: list[storage_pb2.ArchivedEvent]) -> str:
    """What a reader got of some events: their content (with secrets or not), or metadata only."""
    assert events, "no event to judge"
    if all(e.withheld and not e.envelope for e in events):
        return METADATA
    assert all(e.envelope and not e.withheld for e in events), "a mix of views in one stream"
    payloads = [open_payload(EventEnvelope.FromString(e.envelope)) for e in events]
    return SECRETS if any(holds_secrets(p) for p in payloads) else CONTENT


async def outcome(call: object, stream: str) -> tuple[str, str]:
    """What a reader got, and how: a refusal's message, or what an empty answer held (so a
    failure says which of the two it was)."""
    try:
        page = await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.PERMISSION_DENIED:
            raise
        return REFUSED, f"PERMISSION_DENIED: {exc.details()}"
    events = [e for e in page.events if e.stream == stream]
    if events:
        return seen(events), ""
    return REFUSED, f"no {stream} event in the answer ({len(page.events)} of other streams, has_more={page.has_more})"


async def test_every_reader_reads_each_stream_as_the_matrix_says(stack: Stack) -> None:
    tokens: dict[str, tuple[tuple[str, str]]] = {}
    for role in ("member", "admin", "security-auditor", "operator"):
        name = f"{role.replace('-', '')}{uuid.uuid4().hex[:6]}"
        account = await stack.create_user(name, role)
        tokens[role] = bearer((await stack.login(name)).access_token)
        if role == "member":
            member = account  # the one whose account and audit records are read
    # An event in every stream: accounts (AUTH) and their audit records (SEC), a channel and a
    # message (MSG), a publisher key (PATCH), a key-encryption key rotation (STORE).
    gateway = stack.gateway()
    channel = await gateway.CreateChannel(
        messaging_pb2.CreateChannelRequest(name="matrix"), metadata=tokens["member"], timeout=TIMEOUT_S
    )
    await gateway.SendMessage(
        messaging_pb2.PostMessageRequest(channel_id=channel.channel_id, body="private words", idempotency_key="m1"),
        metadata=tokens["member"],
        timeout=TIMEOUT_S,
    )
    publisher_key = public_pem(CryptoSigner.generate_ed25519())
    await patch_pb2_grpc.PatchServiceStub(stack.internal("patch-registry", identity="platform")).SetPublisherKey(
        patch_pb2.SetPublisherKeyRequest(service="messaging", public_key_pem=publisher_key),
        metadata=tokens["operator"],
        timeout=TIMEOUT_S,
    )
    operator = storage_pb2_grpc.StorageArchiveServiceStub(stack.internal("storage", identity="platform"))
    await operator.RotateKeyEncryptionKey(storage_pb2.RotateKeyEncryptionKeyRequest(), timeout=TIMEOUT_S)
    aggregates = {
        "AUTH": ("user", member.user_id),
        "MSG": ("channel", channel.channel_id),
        "SEC": ("security", member.user_id),
        "PATCH": ("release", "messaging"),
        "STORE": ("kek", "storage"),
    }

    async def all_archived() -> bool:
        for aggregate_type, aggregate_id in aggregates.values():
            request = storage_pb2.GetAggregateEventsRequest(aggregate_type=aggregate_type, aggregate_id=aggregate_id)
            if not (await operator.GetAggregateEvents(request, timeout=TIMEOUT_S)).events:
                return False
        return True

    await eventually(all_archived, "an event of every stream in the archive", TIMEOUT_S)

    wrong: list[tuple[str, str, str, str, str]] = []
    for reader, (peer, role) in READERS.items():
        stub = storage_pb2_grpc.StorageArchiveServiceStub(stack.internal("storage", identity=peer))
        metadata = tokens[role] if role else ()
        for index, stream in enumerate(STREAMS):
            aggregate_type, aggregate_id = aggregates[stream]
            calls: dict[str, tuple[Callable[..., object], Message, dict[str, tuple[str, ...]]]] = {
                "ReadArchivedStream": (
                    stub.ReadArchivedStream,
                    storage_pb2.ReadArchivedStreamRequest(stream=stream, limit=1000),
                    READS,
                ),
                "GetAggregateEvents": (
                    stub.GetAggregateEvents,
                    storage_pb2.GetAggregateEventsRequest(aggregate_type=aggregate_type, aggregate_id=aggregate_id),
                    READS,
                ),
                "QueryAudit": (
                    stub.QueryAudit,
                    storage_pb2.QueryAuditRequest(target=aggregate_id, limit=1000),
                    AUDIT_QUERIES,
                ),
            }
            for api, (method, request, table) in calls.items():
                got, how = await outcome(method(request, metadata=metadata, timeout=TIMEOUT_S), stream)
                if got != table[reader][index]:
                    wrong.append((reader, api, stream, table[reader][index], f"{got} ({how})" if how else got))
    assert wrong == [], "\n".join(f"{r} {a} {s}: expected {e}, got {g}" for r, a, s, e, g in wrong)


async def test_the_registrys_overdue_alert_is_found_by_the_auditors_query(
    nats_server: NatsTestServer, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finding past its deadline (a high one is due in a second here) makes the registry raise
    VulnerabilityOverdue on its own PATCH stream; the auditor's query finds it by the registry as
    actor (`service:patch-registry`, as every service records itself) and by the advisory, with
    its content, and `parley audit query` prints it. The detection the deadline counts from is
    archived beside it (FindingDetected), found by the finding's advisory/service/package."""
    if not (OSV_DIR / "PYSEC-2023-192.json").is_file():
        pytest.skip(f"no OSV test data in {OSV_DIR} (set PARLEY_OSV_DIR)")
    monkeypatch.setenv("PARLEY_PATCH_DEADLINE_HIGH_HOURS", str(1 / 3600))
    stack, running = await start_stack(nats_server, pki, tmp_path, registration="open")
    try:
        registry = patch_pb2_grpc.PatchServiceStub(stack.internal("patch-registry", identity="platform"))
        advisory = (OSV_DIR / "PYSEC-2023-192.json").read_text()  # urllib3 before 2.0.6, high
        await stack.create_user("olga", "operator")
        operator = bearer((await stack.login("olga")).access_token)
        await registry.ImportAdvisories(
            patch_pb2.ImportAdvisoriesRequest(osv_json=[advisory]), metadata=operator, timeout=TIMEOUT_S
        )
        await stack.create_user("audrey", "security-auditor")
        auditor = bearer((await stack.login("audrey")).access_token)
        archive = storage_pb2_grpc.StorageArchiveServiceStub(stack.internal("storage", identity="gateway"))
        instance = await nats_server.connect("messaging")  # an instance running the vulnerable urllib3
        beat = fleet_pb2.InstanceHeartbeat(
            service="messaging",
            version="0.1.0",
            instance_id="m-1",
            host="host-1",
            health="SERVING",
            distributions=[fleet_pb2.Distribution(name="urllib3", version="2.0.5")],
        )

        async def alert() -> storage_pb2.ArchivedEvent | None:
            await instance.publish(heartbeat_subject("messaging", "m-1"), beat.SerializeToString())
            page = await archive.QueryAudit(
                storage_pb2.QueryAuditRequest(actor="service:patch-registry", limit=100),
                metadata=auditor,
                timeout=TIMEOUT_S,
            )
            found = [e for e in page.events if e.event_type == "parley.patch.v1.VulnerabilityOverdue"]
            return found[0] if found else None

        event = await eventually(alert, "the overdue alert in the auditor's query", 60.0, interval=0.5)
        payload = open_payload(EventEnvelope.FromString(event.envelope))
        assert isinstance(payload, VulnerabilityOverdue)
        assert (payload.advisory_id, payload.instance_id, payload.package) == ("PYSEC-2023-192", "m-1", "urllib3")
        assert (event.stream, event.aggregate_type, event.aggregate_id) == ("PATCH", "vulnerability", "PYSEC-2023-192")
        by_advisory = await archive.QueryAudit(
            storage_pb2.QueryAuditRequest(target="PYSEC-2023-192", limit=100), metadata=auditor, timeout=TIMEOUT_S
        )
        assert event.event_id in {e.event_id for e in by_advisory.events}
        line = _line(event, {})
        assert f"PATCH#{event.stream_seq}  patch.v1.VulnerabilityOverdue  vulnerability:PYSEC-2023-192" in line
        assert line.endswith("by service:patch-registry")
        # The detection it counts from is archived too, as the registry's own finding event.
        finding = "PYSEC-2023-192/messaging/urllib3"
        detections = await archive.QueryAudit(
            storage_pb2.QueryAuditRequest(target=finding, limit=100), metadata=auditor, timeout=TIMEOUT_S
        )
        [detected] = [e for e in detections.events if e.event_type == "parley.patch.v1.FindingDetected"]
        detection = open_payload(EventEnvelope.FromString(detected.envelope))
        assert isinstance(detection, FindingDetected)
        assert (detection.instance_id, detection.installed_version, detection.priority) == ("m-1", "2.0.5", "high")
        assert detection.deadline == payload.deadline
        assert (detected.stream, detected.aggregate_type, detected.actor) == (
            "PATCH",
            "finding",
            "service:patch-registry",
        )
    finally:
        await stop_stack(stack, running)
