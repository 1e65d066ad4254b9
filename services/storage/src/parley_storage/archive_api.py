"""StorageArchiveService: archive reads, audit queries, lag, export and erasure over gRPC.

Servicer methods only translate: protobuf in, access rules (access.py), the reads a decision
needs, its decision (domain/), the facts appended (codec.py), protobuf out.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from parley.storage.v1 import storage_pb2, storage_pb2_grpc
from parley.storage.v1.events_pb2 import KeyEncryptionKeyRotated

from parley_core.actor import Actor
from parley_core.errors import InvalidArgument, PermissionDenied, Unavailable
from parley_core.event_log import EventLog
from parley_core.runner import RunContext
from parley_core.secret_fields import envelope_without_secrets
from parley_core.tokens import Caller
from parley_core.topology import STREAMS_BY_NAME, channel_subject, erasure_request_subject
from parley_storage import access, codec, domain
from parley_storage.access import Requester, View
from parley_storage.archive import RetentionPolicy, SqlEventArchive, StoredEvent
from parley_storage.audit_monitor import AuditChainMonitor, Verification
from parley_storage.export import EXPORT_FORMAT, build_export
from parley_storage.lag import measure_lag
from parley_storage.progress import ArchiveProgress
from parley_storage.retention import ArchiveBehind, Retention
from parley_storage.security_feed import MAX_BACKLOG, SecurityFeed
from parley_storage.store_log import record
from parley_storage.stream_erasure import erase_from_streams

DEFAULT_PAGE = 500
MAX_PAGE = 1000
# SetRetentionPolicy waits this long for the archive to apply the markers it appends.
RETENTION_WAIT_S = 20.0
Context = grpc.aio.ServicerContext[object, object]


def _page_size(limit: int) -> int:
    if limit > MAX_PAGE:
        raise InvalidArgument(f"limit must be at most {MAX_PAGE}")
    return limit or DEFAULT_PAGE


def _to_proto(event: StoredEvent, view: View, cursor: int = 0) -> storage_pb2.ArchivedEvent:
    """The event as `view` lets its reader see it."""
    envelope = event.envelope
    if envelope is not None and view is View.WITHOUT_SECRETS:
        envelope = envelope_without_secrets(envelope)  # None: a type unknown here, withheld whole
    withheld = event.envelope is not None and (view is View.METADATA or envelope is None)
    return storage_pb2.ArchivedEvent(
        stream=event.stream,
        stream_seq=event.stream_seq,
        subject=event.subject,
        event_id=event.event_id,
        event_type=event.event_type,
        aggregate_type=event.aggregate_type,
        aggregate_id=event.aggregate_id,
        aggregate_version=event.aggregate_version,
        occurred_at_ns=event.occurred_at_ns,
        actor=str(Actor.parse(event.actor)),  # old forms read as the canonical one
        envelope=envelope.SerializeToString() if envelope is not None and not withheld else b"",
        erased=event.envelope is None and not event.unreadable,
        unreadable=event.unreadable,
        withheld=withheld,
        cursor=cursor,
    )


def _policy_proto(policy: RetentionPolicy) -> storage_pb2.RetentionPolicy:
    set_at = Timestamp()
    set_at.FromNanoseconds(policy.set_at_ns)
    return storage_pb2.RetentionPolicy(
        channel_id=policy.channel_id, days=policy.days, set_by=policy.set_by, set_at=set_at
    )


def _chain_state(verified: Verification, interval_s: float) -> storage_pb2.AuditChainState:
    seen = verified.last_checkpoint
    checkpoint = (
        storage_pb2.AuditCheckpoint(
            chain_index=seen.checkpoint.chain_index,
            taken_at=seen.checkpoint.taken_at,
            record_time=seen.checkpoint.occurred_at_ns / 1e9,
            source=seen.checkpoint.source,
            matches=seen.matches,
        )
        if seen is not None
        else None
    )
    return storage_pb2.AuditChainState(
        intact=not verified.findings,
        records=verified.records,
        last_index=verified.verified_index,
        last_recorded_at=verified.last_recorded_at_ns / 1e9,
        findings=[str(f) for f in sorted(verified.findings, key=lambda f: (f.chain_index, f.kind))],
        verified_at=verified.verified_at,
        head_index=verified.head_index,
        last_checkpoint=checkpoint,
        checkpoint_errors=verified.checkpoint_errors,
        verify_interval_seconds=interval_s,
    )


class StorageArchiveApi(storage_pb2_grpc.StorageArchiveServiceServicer):
    def __init__(
        self,
        ctx: RunContext,
        archive: SqlEventArchive,
        retention: Retention,
        audit_monitor: AuditChainMonitor,
        progress: ArchiveProgress,
        *,
        events: EventLog,
        audit_verify_interval_s: float,
    ) -> None:
        self._ctx = ctx
        self._events = events  # storage's own STORE facts, folded by its projection (erasures.py)
        self._archive = archive
        self._retention = retention
        self._audit_monitor = audit_monitor
        self._audit_verify_interval_s = audit_verify_interval_s
        self._security = SecurityFeed(archive, progress)

    def _requester(self, context: Context) -> Requester:
        names = [n.decode() for n in context.auth_context().get("x509_common_name", [])]
        has_token = any(key == "authorization" for key, _ in context.invocation_metadata() or ())
        caller: Caller | None = self._ctx.tokens.caller(context) if has_token else None
        return Requester(peer=names[0] if names else "", caller=caller)

    async def ReadArchivedStream(
        self, request: storage_pb2.ReadArchivedStreamRequest, context: Context
    ) -> storage_pb2.ArchivedEventsPage:
        requester = self._requester(context)
        access.readable_streams(requester)
        if request.stream not in STREAMS_BY_NAME:
            raise InvalidArgument(f"unknown stream {request.stream!r}; streams: {', '.join(sorted(STREAMS_BY_NAME))}")
        view = access.stream_view(requester, request.stream)
        if view is View.REFUSED:
            raise PermissionDenied(f"you do not read stream {request.stream} from the archive")
        stored, has_more = await self._archive.stream_events(
            request.stream, after_seq=request.after_seq, limit=_page_size(request.limit)
        )
        return storage_pb2.ArchivedEventsPage(events=[_to_proto(e, view) for e in stored], has_more=has_more)

    async def GetAggregateEvents(
        self, request: storage_pb2.GetAggregateEventsRequest, context: Context
    ) -> storage_pb2.ArchivedEventsPage:
        requester = self._requester(context)
        allowed = access.readable_streams(requester)
        if not request.aggregate_type or not request.aggregate_id:
            raise InvalidArgument("aggregate_type and aggregate_id are required")
        stored, has_more = await self._archive.aggregate_events(
            request.aggregate_type,
            request.aggregate_id,
            after_version=request.after_version,
            limit=_page_size(request.limit),
            streams=allowed,
        )
        return storage_pb2.ArchivedEventsPage(
            events=[_to_proto(e, access.stream_view(requester, e.stream)) for e in stored], has_more=has_more
        )

    async def QueryAudit(
        self, request: storage_pb2.QueryAuditRequest, context: Context
    ) -> storage_pb2.ArchivedEventsPage:
        requester = self._requester(context)
        access.require_auditor(requester)
        if request.until_ns and request.since_ns and request.until_ns <= request.since_ns:
            raise InvalidArgument("until_ns must be after since_ns")
        found, has_more = await self._archive.audit_events(
            actor=request.actor,
            target=request.target,
            since_ns=request.since_ns,
            until_ns=request.until_ns,
            after_id=request.after_cursor,
            limit=_page_size(request.limit),
        )
        return storage_pb2.ArchivedEventsPage(
            events=[_to_proto(e, access.stream_view(requester, e.stream), row_id) for row_id, e in found],
            has_more=has_more,
        )

    async def GetAuditChainState(
        self, request: storage_pb2.GetAuditChainStateRequest, context: Context
    ) -> storage_pb2.AuditChainState:
        # The auditor, and the platform identity for the compliance report's last checkpoint.
        access.require_operator_or_auditor(self._requester(context), "the audit chain's state")
        monitor = self._audit_monitor
        verified = await (monitor.verify() if request.verify_now else monitor.latest())
        return _chain_state(verified, self._audit_verify_interval_s)

    async def WatchSecurityEvents(
        self, request: storage_pb2.WatchSecurityEventsRequest, context: Context
    ) -> AsyncIterator[storage_pb2.SecurityEventNotice]:
        access.require_security_watcher(self._requester(context))
        if request.backlog > MAX_BACKLOG:
            raise InvalidArgument(f"backlog must be at most {MAX_BACKLOG}")

        def still_allowed() -> None:  # the token expired or was revoked, or the role changed
            access.require_security_watcher(self._requester(context))

        async for notice in self._security.watch(request, still_allowed):
            yield notice

    async def GetArchiveLag(
        self, request: storage_pb2.GetArchiveLagRequest, context: Context
    ) -> storage_pb2.GetArchiveLagResponse:
        access.require_operator_or_auditor(self._requester(context), "archive lag")
        lags = await measure_lag(self._ctx.bus.js, self._archive)
        return storage_pb2.GetArchiveLagResponse(
            streams=[
                storage_pb2.StreamLag(
                    stream=lag.stream,
                    consumer=lag.consumer,
                    stream_last_seq=lag.stream_last_seq,
                    archived_seq=lag.acked_seq,
                    committed_seq=lag.committed_seq,
                    events_behind=lag.events_behind,
                    seconds_behind=lag.seconds_behind,
                )
                for lag in lags
            ]
        )

    async def GetSchemaVersions(
        self, request: storage_pb2.GetSchemaVersionsRequest, context: Context
    ) -> storage_pb2.GetSchemaVersionsResponse:
        access.require_platform_peer(self._requester(context))
        return storage_pb2.GetSchemaVersionsResponse(
            versions=[
                storage_pb2.EventSchemaVersions(
                    stream=v.stream,
                    event_type=v.event_type,
                    oldest_schema_version=v.oldest,
                    newest_schema_version=v.newest,
                    events=v.events,
                )
                for v in await self._archive.schema_versions()
            ]
        )

    async def ExportUserData(
        self, request: storage_pb2.ExportUserDataRequest, context: Context
    ) -> storage_pb2.ExportUserDataResponse:
        user_id = domain.check_user_id(request.user_id)
        requester = self._requester(context)
        access.require_self_or_operator(requester, user_id)
        stored = await self._archive.user_events(user_id)
        facts, _ = domain.decide_export(domain.ExportUserData(user_id, exported_by=requester.acting_as))
        await self._record(facts, requester)
        return storage_pb2.ExportUserDataResponse(format=EXPORT_FORMAT, archive=build_export(user_id, stored))

    async def EraseUserData(
        self, request: storage_pb2.EraseUserDataRequest, context: Context
    ) -> storage_pb2.EraseUserDataResponse:
        user_id = domain.check_user_id(request.user_id)
        requester = self._requester(context)
        access.require_self_or_operator(requester, user_id)
        command = domain.EraseUserData(user_id, erased_by=requester.acting_as, reason=request.reason)
        requested = bool(await self._ctx.bus.last_subject_seq("AUTH", erasure_request_subject(user_id)))
        domain.check_erasure_requested(command, requested=requested)  # before any key is read
        live = await self._archive.live_user_keys(user_id)
        facts, _ = domain.decide_erase(command, requested=requested, live_key_ids=live)
        # The audited decision is appended first: an erasure never happens without its record.
        try:
            await record(self._events, facts, requester.actor)
        except Exception as exc:  # any bus failure: nothing was shredded, the caller may retry
            raise Unavailable("could not record the erasure; nothing was erased, retry") from exc
        shredded = await self._archive.shred_user(user_id)
        unreadable = await self._archive.count_events_under(shredded.key_ids)
        try:
            deleted = await erase_from_streams(self._ctx.bus, self._archive, user_id)
        except Exception as exc:  # the keys are gone; only the deletion from the log is left to do
            raise Unavailable(
                "the user's keys are destroyed, but deleting their events from the event log did not finish"
                f" ({exc}); call EraseUserData again, or storage finishes it at its next start"
            ) from exc
        return storage_pb2.EraseUserDataResponse(
            destroyed_key_ids=list(shredded.key_ids), events_unreadable=unreadable, events_deleted_from_log=deleted
        )

    async def SetRetentionPolicy(
        self, request: storage_pb2.SetRetentionPolicyRequest, context: Context
    ) -> storage_pb2.SetRetentionPolicyResponse:
        requester = self._requester(context)
        access.require_operator(requester)
        command = domain.check_retention_request(domain.SetRetentionPolicy(request.channel_id, request.days))
        newest = await self._ctx.bus.last_subject_seq("MSG", channel_subject(command.channel_id))
        domain.check_channel_exists(command, newest)
        try:
            # The policy is messaging's record (ChannelRetentionSet on the channel): read it from
            # the archive once that holds the channel's newest event.
            await self._retention.until_archived([newest], RETENTION_WAIT_S)
            recorded = await self._archive.retention_policies(command.channel_id)
            domain.check_recorded_policy(command, recorded[0].days if recorded else 0)
            removed = await self._retention.apply(
                now_ns=time.time_ns(), timeout=RETENTION_WAIT_S, channel_id=command.channel_id
            )
        except ArchiveBehind as exc:
            raise Unavailable(
                f"the archive is behind ({exc}), so the channel's expired messages may still be in history;"
                " call again to wait for it (a repeated call removes nothing twice)"
            ) from exc
        return storage_pb2.SetRetentionPolicyResponse(removed_now=removed)

    async def ListRetentionPolicies(
        self, request: storage_pb2.ListRetentionPoliciesRequest, context: Context
    ) -> storage_pb2.ListRetentionPoliciesResponse:
        access.require_operator_or_auditor(self._requester(context), "the list of retention policies")
        return storage_pb2.ListRetentionPoliciesResponse(
            policies=[_policy_proto(p) for p in await self._archive.retention_policies()]
        )

    async def _record(self, facts: Sequence[domain.Fact], requester: Requester) -> None:
        """An operator's change in the audit trail (STORE, then the archive's audit queries):
        a record storage's projection does not fold, appended after whatever its subject holds."""
        try:
            await record(self._ctx.bus, facts, requester.actor)
        except Exception as exc:  # any bus failure: the caller is told, and may call again
            raise Unavailable("recording the change in the audit trail failed; call again") from exc

    async def RotateKeyEncryptionKey(
        self, request: storage_pb2.RotateKeyEncryptionKeyRequest, context: Context
    ) -> KeyEncryptionKeyRotated:
        requester = self._requester(context)
        access.require_operator(requester)
        rotation = await self._archive.rotate_kek()
        facts, rotated = domain.decide_kek_rotated(
            new_kek_id=rotation.new_kek_id,
            rewrapped=rotation.rewrapped,
            retired_kek_ids=rotation.destroyed_kek_ids,
            rotated_by=requester.acting_as,
        )
        try:
            await self._record(facts, requester)
        except Unavailable as exc:
            raise Unavailable(f"the key-encryption key is now {rotation.new_kek_id}, but {exc.args[0]}") from exc
        return codec.kek_record(rotated)
