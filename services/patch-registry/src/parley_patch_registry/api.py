"""PatchService: protobuf in, registry commands, protobuf out. Nothing else."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import cast

import grpc
from parley.patch.v1 import events_pb2, patch_pb2, patch_pb2_grpc

from parley_core.errors import InvalidArgument
from parley_core.same_named import proto_field_names, same_named
from parley_core.time_fields import MAX_SECONDS  # 9999-12-31T23:59:59Z, the last time a datetime holds
from parley_core.tokens import TokenVerifier
from parley_patch_registry.codec import to_proto
from parley_patch_registry.findings import AFFECTED_FIELDS, Finding
from parley_patch_registry.registry import Registry
from parley_patch_registry.rollout import Rollout
from parley_patch_registry.rollout_events import GateEvaluated, RolloutEvent, describe, exit_description
from parley_patch_registry.tuf_http import RepositoryHttpServer

Context = grpc.aio.ServicerContext[object, object]


# What the API's Rollout shows of the aggregate as it is; its steps and audit are converted.
_ROLLOUT_AS_IS = proto_field_names(patch_pb2.Rollout, leaving=("steps", "audit", "target_sha256"))


def rollout_proto(rollout: Rollout, *, target_sha256: str) -> patch_pb2.Rollout:
    return patch_pb2.Rollout(
        **same_named(rollout, *_ROLLOUT_AS_IS),
        target_sha256=target_sha256,
        steps=[
            patch_pb2.RolloutStep(
                replaces_instance=s.replaces_instance,
                new_instance=s.new_instance,
                drained=s.drained,
                gate="pending" if s.gate_passed is None else ("passed" if s.gate_passed else "failed"),
                exited=exit_description(s.exit_code) if s.exit_code is not None else "",
                last_log_lines=list(s.last_log_lines),
                weight=100 if s.gate_passed else rollout.weights[min(s.phase, len(rollout.weights) - 1)],
            )
            for s in rollout.steps
        ],
        audit=[audit_entry_proto(e) for e in rollout.history],
    )


def audit_entry_proto(event: RolloutEvent) -> patch_pb2.AuditEntry:
    entry = patch_pb2.AuditEntry(at=event.at, actor=event.actor, event=type(event).__name__, detail=describe(event))
    if isinstance(event, GateEvaluated):
        # The event itself too, so a console can chart its figures without parsing the detail.
        entry.gate.CopyFrom(cast(events_pb2.GateEvaluated, to_proto(event)))
    return entry


def finding_proto(finding: Finding, now: float) -> patch_pb2.Finding:
    return patch_pb2.Finding(
        **same_named(finding, *AFFECTED_FIELDS),
        aliases=list(finding.aliases),
        summary=finding.summary,
        fixed_in=list(finding.fixed_in),
        priority=finding.score.priority,
        cvss_score=finding.score.value or 0.0,
        detected_at=finding.detected_at.timestamp(),
        deadline=finding.deadline.timestamp(),
        overdue=finding.deadline.timestamp() < now,
    )


class PatchApi(patch_pb2_grpc.PatchServiceServicer):
    def __init__(self, registry: Registry, tokens: TokenVerifier, http: RepositoryHttpServer) -> None:
        self.registry = registry
        self.tokens = tokens
        self.http = http

    def _rollout_proto(self, rollout: Rollout) -> patch_pb2.Rollout:
        return rollout_proto(rollout, target_sha256=self.registry.published_sha256(rollout.target_path))

    async def SetPublisherKey(
        self, request: patch_pb2.SetPublisherKeyRequest, context: Context
    ) -> events_pb2.PublisherKeySet:
        caller = self.tokens.caller(context)
        return await self.registry.set_publisher_key(
            caller, service=request.service, public_key_pem=request.public_key_pem
        )

    async def PrepareRootRotation(
        self, request: patch_pb2.PrepareRootRotationRequest, context: Context
    ) -> patch_pb2.PreparedRoot:
        caller = self.tokens.caller(context)
        metadata = self.registry.prepare_root_rotation(
            caller, public_keys_pem=list(request.new_public_keys_pem), threshold=request.threshold
        )
        current = self.registry.repo.root().signed.roles["root"]
        return patch_pb2.PreparedRoot(
            metadata=metadata, current_keyids=list(current.keyids), current_threshold=current.threshold
        )

    async def RotateRoot(self, request: patch_pb2.RotateRootRequest, context: Context) -> events_pb2.RootRotated:
        return await self.registry.rotate_root(self.tokens.caller(context), request.signed_root)

    async def PrepareRelease(
        self, request: patch_pb2.PrepareReleaseRequest, context: Context
    ) -> patch_pb2.PreparedRelease:
        caller = self.tokens.caller(context)
        metadata, role, keyids = self.registry.prepare_release(
            caller,
            service=request.service,
            version=request.version,
            wheel_name=request.wheel_name,
            sha256=request.sha256,
            length=request.length,
            fixes=list(request.fixes),
            min_event_schema=request.min_event_schema,
        )
        return patch_pb2.PreparedRelease(metadata=metadata, role=role, keyids=keyids)

    async def PublishRelease(
        self, request: patch_pb2.PublishReleaseRequest, context: Context
    ) -> events_pb2.ReleasePublished:
        caller = self.tokens.caller(context)
        return await self.registry.publish_release(
            caller,
            service=request.service,
            version=request.version,
            wheel_name=request.wheel_name,
            wheel=request.wheel,
            signed_metadata=request.signed_metadata,
        )

    async def ListReleases(
        self, request: patch_pb2.ListReleasesRequest, context: Context
    ) -> patch_pb2.ListReleasesResponse:
        infos = self.registry.repo.releases(request.service or None)
        return patch_pb2.ListReleasesResponse(releases=[self.registry.release_record(i) for i in infos])

    async def ImportAdvisories(
        self, request: patch_pb2.ImportAdvisoriesRequest, context: Context
    ) -> patch_pb2.ImportAdvisoriesResponse:
        caller = self.tokens.caller(context)
        imported, unchanged, withdrawn = await self.registry.import_advisories(caller, list(request.osv_json))
        return patch_pb2.ImportAdvisoriesResponse(imported=imported, unchanged=unchanged, withdrawn=withdrawn)

    async def ListFindings(
        self, request: patch_pb2.ListFindingsRequest, context: Context
    ) -> patch_pb2.ListFindingsResponse:
        now = time.time()
        response = patch_pb2.ListFindingsResponse(
            findings=[finding_proto(f, now) for f in await self.registry.reconcile_findings()]
        )
        if request.include_fixed:
            since = fixed_since(request.fixed_since)
            for fixed in self.registry.findings.fixed(since):
                shown = finding_proto(fixed.finding, fixed.fixed_at.timestamp())
                shown.fixed_at = fixed.fixed_at.timestamp()
                response.fixed.append(shown)
        return response

    async def PlanRollout(self, request: patch_pb2.PlanRolloutRequest, context: Context) -> patch_pb2.Rollout:
        caller = self.tokens.caller(context)
        rollout = await self.registry.plan(
            caller,
            service=request.service,
            to_version=request.to_version,
            force=request.force,
            reason=request.reason,
            weights=list(request.weights),
        )
        return self._rollout_proto(rollout)

    async def RevertService(self, request: patch_pb2.RevertServiceRequest, context: Context) -> patch_pb2.Rollout:
        caller = self.tokens.caller(context)
        rollout = await self.registry.revert_service(
            caller, request.service, reason=request.reason, force=request.force
        )
        return self._rollout_proto(rollout)

    async def PublishBaseRelease(
        self, request: patch_pb2.PublishBaseReleaseRequest, context: Context
    ) -> events_pb2.ReleasePublished:
        return await self.registry.publish_base_release(
            service=request.service, version=request.version, wheel_name=request.wheel_name, wheel=request.wheel
        )

    async def _command(self, request: patch_pb2.RolloutCommand, context: Context, action: str) -> patch_pb2.Rollout:
        caller = self.tokens.caller(context)
        return self._rollout_proto(await self.registry.command(caller, request.rollout_id, action, request.reason))

    async def ApproveRollout(self, request: patch_pb2.RolloutCommand, context: Context) -> patch_pb2.Rollout:
        return await self._command(request, context, "approve")

    async def PauseRollout(self, request: patch_pb2.RolloutCommand, context: Context) -> patch_pb2.Rollout:
        return await self._command(request, context, "pause")

    async def ResumeRollout(self, request: patch_pb2.RolloutCommand, context: Context) -> patch_pb2.Rollout:
        return await self._command(request, context, "resume")

    async def RollbackRollout(self, request: patch_pb2.RolloutCommand, context: Context) -> patch_pb2.Rollout:
        return await self._command(request, context, "rollback")

    async def GetRollout(self, request: patch_pb2.GetRolloutRequest, context: Context) -> patch_pb2.Rollout:
        return self._rollout_proto(self.registry.rollout(request.rollout_id))

    async def ListRollouts(
        self, request: patch_pb2.ListRolloutsRequest, context: Context
    ) -> patch_pb2.ListRolloutsResponse:
        rollouts = sorted(self.registry.rollouts.values(), key=lambda r: r.history[0].at if r.history else 0.0)
        return patch_pb2.ListRolloutsResponse(rollouts=[self._rollout_proto(r) for r in rollouts])

    async def ReportInstanceStarted(
        self, request: patch_pb2.ReportInstanceRequest, context: Context
    ) -> patch_pb2.Rollout:
        rollout = await self.registry.agent_report(
            request.rollout_id, "started", host=request.host, instance_id=request.instance_id, version=request.version
        )
        return self._rollout_proto(rollout)

    async def ReportInstanceDrained(
        self, request: patch_pb2.ReportInstanceRequest, context: Context
    ) -> patch_pb2.Rollout:
        return self._rollout_proto(
            await self.registry.agent_report(
                request.rollout_id, "drained", host=request.host, instance_id=request.instance_id
            )
        )

    async def ReportInstanceExited(
        self, request: patch_pb2.ReportInstanceExitRequest, context: Context
    ) -> patch_pb2.Rollout:
        rollout = await self.registry.agent_report(
            request.rollout_id,
            "exited",
            host=request.host,
            instance_id=request.instance_id,
            exit_code=request.exit_code,
            last_log_lines=list(request.last_log_lines),
        )
        return self._rollout_proto(rollout)

    async def ReportRolledBack(self, request: patch_pb2.GetRolloutRequest, context: Context) -> patch_pb2.Rollout:
        return self._rollout_proto(
            await self.registry.agent_report(request.rollout_id, "rolled_back", host=request.host)
        )

    async def TufRepository(
        self, request: patch_pb2.TufRepositoryRequest, context: Context
    ) -> patch_pb2.TufRepositoryResponse:
        return patch_pb2.TufRepositoryResponse(
            metadata_url=self.http.metadata_url,
            targets_url=self.http.targets_url,
            trusted_root=(self.registry.repo.metadata_dir / "1.root.json").read_bytes(),
        )


def fixed_since(seconds: float) -> datetime | None:
    """A request's `fixed_since` (unix seconds; 0: every fix kept) as a time, refused when no time."""
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_SECONDS:
        raise InvalidArgument(f"fixed_since is unix seconds from 0 (every fix kept) to {MAX_SECONDS}, not {seconds}")
    return datetime.fromtimestamp(seconds, UTC) if seconds > 0 else None
