"""The storage service's composition: archive consumers and the history servicer."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from parley.messaging.v1 import messaging_pb2
from parley.storage.v1 import storage_pb2, storage_pb2_grpc
from sqlalchemy.exc import InterfaceError, OperationalError

from parley_core.bus import ReceivedEvent, RetryLater
from parley_core.errors import InvalidArgument, PermissionDenied, Unavailable
from parley_core.files import ensure_private_dir
from parley_core.runner import RunContext
from parley_core.topology import CONSUMERS, ConsumerSpec
from parley_storage.archive import SqlEventArchive, open_engine

DEFAULT_PAGE = 100
# Errors that mean the database cannot be reached or used right now (connection refused or
# lost, SQLite busy); the data and the request are fine, so the caller should retry.
DATABASE_DOWN = (OperationalError, InterfaceError)
MAX_PAGE = 500


class StorageApp(storage_pb2_grpc.StorageServiceServicer):
    def __init__(self) -> None:
        self._ctx: RunContext | None = None
        self.archive: SqlEventArchive | None = None

    async def start(self, ctx: RunContext) -> None:
        self._ctx = ctx
        url = ctx.settings.database_url
        if not url:
            folder = ensure_private_dir(ctx.settings.data_dir / "storage")
            url = f"sqlite:///{folder / 'archive.db'}"
        self.archive = SqlEventArchive(open_engine(url))
        self.archive.create_schema()
        for spec in CONSUMERS:
            if spec.service == "storage":
                await ctx.bus.consume(spec, partial(self._archive, spec))
        storage_pb2_grpc.add_StorageServiceServicer_to_server(self, ctx.server)
        ctx.add_service_name(storage_pb2.DESCRIPTOR.services_by_name["StorageService"].full_name)

    async def stop(self) -> None:
        if self.archive is not None:
            self.archive.engine.dispose()

    async def _archive(self, spec: ConsumerSpec, batch: Sequence[ReceivedEvent]) -> None:
        assert self.archive is not None
        try:
            await self.archive.archive(spec.durable, batch)
        except DATABASE_DOWN as exc:
            # The database, not the events, is at fault: hold the batch instead of parking it.
            raise RetryLater(f"archive database unavailable: {exc.__class__.__name__}") from exc

    async def GetChannelHistory(
        self, request: storage_pb2.GetChannelHistoryRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> storage_pb2.GetChannelHistoryResponse:
        assert self._ctx is not None
        assert self.archive is not None
        caller = self._ctx.tokens.caller(context)
        if not request.channel_id:
            raise InvalidArgument("channel_id is required")
        if request.limit > MAX_PAGE:
            raise InvalidArgument(f"limit must be at most {MAX_PAGE}")
        try:
            if not await self.archive.is_member(request.channel_id, caller.user_id):
                raise PermissionDenied("you are not a member of this channel")
            messages, has_more = await self.archive.channel_history(
                request.channel_id, after_seq=request.after_seq, limit=request.limit or DEFAULT_PAGE
            )
        except DATABASE_DOWN:
            raise Unavailable("history is unavailable while the archive database is down; retry shortly") from None
        out = []
        for m in messages:
            sent = Timestamp()
            sent.FromNanoseconds(m.sent_at_ns)
            out.append(
                messaging_pb2.ChatMessage(
                    channel_id=m.channel_id,
                    message_id=m.message_id,
                    sender_id=m.sender_id,
                    sender_name=m.sender_name,
                    channel_seq=m.channel_seq,
                    body=m.body,
                    sent_at=sent,
                )
            )
        return storage_pb2.GetChannelHistoryResponse(messages=out, has_more=has_more)
