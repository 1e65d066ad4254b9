"""Who reads which stream through the archive API, cell by cell (the matrix in README's security
section): every identity a call comes with (a service's certificate, the operator's platform
identity, a user's token on the gateway's connection) against every archived stream, through
every call that returns events. Written out by hand here, not derived from the code under test.

Cells: "refused"; "metadata" (position, type, aggregate, actor, time; no content); "content"
(fields marked secret withheld); "secrets" (content with the writer's sealed secrets: auth only).
"""

from __future__ import annotations

import uuid

import grpc
from parley.common.v1.envelope_pb2 import EventEnvelope
from parley.messaging.v1 import messaging_pb2
from parley.patch.v1 import patch_pb2, patch_pb2_grpc
from parley.storage.v1 import storage_pb2, storage_pb2_grpc
from securesystemslib.signer import CryptoSigner

from parley_cli.publishing import public_pem
from parley_core.envelope import open_payload
from parley_core.secret_fields import holds_secrets
from parley_core.testing.stack import TIMEOUT_S, Stack, bearer
from parley_core.testing.waiting import eventually

STREAMS = ("AUTH", "MSG", "SEC", "PATCH", "STORE")
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


async def outcome(call: object, stream: str) -> str:
    try:
        page = await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.PERMISSION_DENIED:
            raise
        return REFUSED
    events = [e for e in page.events if e.stream == stream]
    return seen(events) if events else REFUSED


async def test_every_reader_reads_each_stream_as_the_matrix_says(stack: Stack) -> None:
    tokens: dict[str, tuple[tuple[str, str]]] = {}
    for role in ("member", "admin", "security-auditor", "operator"):
        name = f"{role.replace('-', '')}{uuid.uuid4().hex[:6]}"
        account = await stack.create_user(name, role)
        tokens[role] = bearer((await stack.login(name)).access_token)
        if role == "member":
            member = account  # the one whose account and audit records are read
    # An event in every stream: accounts (AUTH) and their audit records (SEC), a channel and a
    # message (MSG), a publisher key (PATCH), a retention policy (STORE).
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
    await operator.SetRetentionPolicy(
        storage_pb2.SetRetentionPolicyRequest(channel_id=channel.channel_id, days=30), timeout=TIMEOUT_S
    )
    aggregates = {
        "AUTH": ("user", member.user_id),
        "MSG": ("channel", channel.channel_id),
        "SEC": ("security", member.user_id),
        "PATCH": ("release", "messaging"),
        "STORE": ("retention", channel.channel_id),
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
            calls = {
                "ReadArchivedStream": (
                    stub.ReadArchivedStream(
                        storage_pb2.ReadArchivedStreamRequest(stream=stream, limit=1000),
                        metadata=metadata,
                        timeout=TIMEOUT_S,
                    ),
                    READS,
                ),
                "GetAggregateEvents": (
                    stub.GetAggregateEvents(
                        storage_pb2.GetAggregateEventsRequest(aggregate_type=aggregate_type, aggregate_id=aggregate_id),
                        metadata=metadata,
                        timeout=TIMEOUT_S,
                    ),
                    READS,
                ),
                "QueryAudit": (
                    stub.QueryAudit(
                        storage_pb2.QueryAuditRequest(target=aggregate_id, limit=1000),
                        metadata=metadata,
                        timeout=TIMEOUT_S,
                    ),
                    AUDIT_QUERIES,
                ),
            }
            for api, (call, table) in calls.items():
                got = await outcome(call, stream)
                if got != table[reader][index]:
                    wrong.append((reader, api, stream, table[reader][index], got))
    assert wrong == [], "\n".join(f"{r} {a} {s}: expected {e}, got {g}" for r, a, s, e, g in wrong)
