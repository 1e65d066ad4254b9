"""The operator's console calls that the gateway answers itself or relays with more than a
forward: the filed compliance reports and the security event stream.
The caller's permission is checked by the servicer first (GatewayApp._require)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from parley.gateway.v1 import gateway_pb2
from parley.storage.v1 import storage_pb2, storage_pb2_grpc

from parley_core.compliance_reports import BadReportRequest, NoSuchReport, filed_reports, read_report
from parley_gateway.forwarding import HIDDEN_DETAIL, Context, Forwarded

log = logging.getLogger(__name__)


async def relay_security_events(
    archive: storage_pb2_grpc.StorageArchiveServiceAsyncStub,
    request: storage_pb2.WatchSecurityEventsRequest,
    context: Context,
) -> AsyncIterator[storage_pb2.SecurityEventNotice]:
    """Storage's security event stream, for as long as the caller holds it open; storage ends
    it when the token no longer holds. A failure shows only what the caller may see."""
    fwd = Forwarded.of(context)
    # No deadline of ours: the stream lives as long as the client keeps it (or its own deadline).
    call = archive.WatchSecurityEvents(request, metadata=fwd.metadata, timeout=context.time_remaining())
    try:
        async for notice in call:
            yield notice
    except grpc.aio.AioRpcError as exc:
        if (public := HIDDEN_DETAIL.get(exc.code())) is None:
            await context.abort(exc.code(), exc.details() or "")
        log.warning("security event stream failed", extra={"code": exc.code().name, "detail": exc.details()})
        await context.abort(exc.code(), public)
    finally:
        call.cancel()


async def report_list(data_dir: Path) -> gateway_pb2.ListComplianceReportsResponse:
    """The reports filed in the data folder."""
    filed = await asyncio.to_thread(filed_reports, data_dir)
    return gateway_pb2.ListComplianceReportsResponse(
        reports=[
            gateway_pb2.ComplianceReportEntry(report_id=r.report_id, written_at=r.written_at, formats=r.formats)
            for r in filed
        ]
    )


async def report(
    data_dir: Path, request: gateway_pb2.GetComplianceReportRequest, context: Context
) -> gateway_pb2.ComplianceReport:
    """One filed report's text, by id (never a path: parley_core.compliance_reports)."""
    try:
        filed, fmt, content = await asyncio.to_thread(read_report, data_dir, request.report_id, request.format)
    except BadReportRequest as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        raise  # abort raises; this keeps type checkers informed
    except NoSuchReport as exc:
        await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        raise
    return gateway_pb2.ComplianceReport(
        report_id=filed.report_id, format=fmt, content=content, written_at=filed.written_at
    )
